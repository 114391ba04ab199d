//! Corrupt parameter files: every truncation and ≥ 1,000 seeded bit flips of
//! files written by `Params::save`, read back by `load_like` and `load`.
//!
//! "Accepted with wrong content" is defined as: a load that succeeds but whose
//! tensors differ from the saved ones in a name, a shape or a single bit. It
//! must never happen. A flip may be accepted only if the loaded tensors are
//! bit-identical to the saved ones (e.g. a flip the JSON parser cannot see);
//! a flip confined to the data section changes the content and must be
//! reported as `ContentMismatch` (the content hash in the metadata). Every
//! error must be a `ParamsError` whose message names the file; a panic fails
//! the test with the case printed.

mod common;

use std::path::Path;

use common::{assert_names, flipped, no_panic, random_flips, Scratch, Tally};
use models::{Activation, Mlp, Model, Params, ParamsError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tape::Float;

/// The three saved files: (label, f32 params, f64 params) — one of the two is used.
enum Fixture {
    F32(Params<f32>),
    F64(Params<f64>),
}

fn fixtures() -> Vec<(&'static str, Fixture)> {
    vec![
        (
            "mlp[3,4,2] f32",
            Fixture::F32(Mlp::new(&[3, 4, 2], Activation::Tanh).init(1)),
        ),
        (
            "mlp[2,3,1] f64",
            Fixture::F64(Mlp::new(&[2, 3, 1], Activation::Tanh).init(2)),
        ),
        (
            "mlp[5,6,3] f64",
            Fixture::F64(Mlp::new(&[5, 6, 3], Activation::Relu).init(3)),
        ),
    ]
}

fn bits<F: Float>(p: &Params<F>) -> Vec<(String, Vec<usize>, Vec<u64>)> {
    let mut v: Vec<_> = p
        .iter()
        .map(|(n, t)| {
            (
                n.to_string(),
                t.dims().to_vec(),
                t.data().iter().map(|x| x.to_f64_prim().to_bits()).collect(),
            )
        })
        .collect();
    v.sort();
    v
}

/// What a load of a damaged file did: `Ok(true)` accepted with the saved
/// content, `Ok(false)` accepted with other content, `Err` the error.
type Outcome = Result<bool, ParamsError>;

/// Loads `path` with both `load_like` and `load`; returns both outcomes.
fn load_both<F: Float>(want: &Params<F>, path: &Path) -> [Outcome; 2] {
    let reference = bits(want);
    [
        want.load_like(path).map(|p| bits(&p) == reference),
        Params::<F>::load(path).map(|p| bits(&p) == reference),
    ]
}

fn save_bytes(fx: &Fixture, path: &Path) -> Vec<u8> {
    match fx {
        Fixture::F32(p) => p.save(path).unwrap(),
        Fixture::F64(p) => p.save(path).unwrap(),
    }
    std::fs::read(path).unwrap()
}

fn run_case(fx: &Fixture, path: &Path, bytes: &[u8], case: &dyn std::fmt::Display) -> [Outcome; 2] {
    std::fs::write(path, bytes).unwrap();
    no_panic(case, || match fx {
        Fixture::F32(p) => load_both(p, path),
        Fixture::F64(p) => load_both(p, path),
    })
}

/// Header length `n` (the file is `8 + n` header bytes, then data).
fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn every_truncation_is_a_corrupt_error_naming_the_file() {
    let dir = Scratch::new("corrupt-st-trunc");
    let path = dir.0.join("params.safetensors");
    let mut tally = Tally::default();
    for (label, fx) in fixtures() {
        let full = save_bytes(&fx, &path);
        let n = header_len(&full);
        for len in 0..full.len() {
            let class = match len {
                0 => "empty",
                l if l < 8 => "in the length prefix",
                l if l < 8 + n => "mid-header",
                l if l == 8 + n => "header only",
                l if l + 1 < full.len() => "mid-data",
                _ => "one byte short",
            };
            tally.hit(class);
            let case = format!("{label}: first {len} of {} bytes ({class})", full.len());
            for (which, out) in
                ["load_like", "load"]
                    .iter()
                    .zip(run_case(&fx, &path, &full[..len], &case))
            {
                match out {
                    Err(e @ ParamsError::Corrupt { .. }) => {
                        assert_names(&e.to_string(), &path, &format!("{case}, {which}"))
                    }
                    Err(e) => panic!("case {case}, {which}: expected Corrupt, got {e}"),
                    Ok(_) => panic!("case {case}, {which}: a truncated file was accepted"),
                }
            }
        }
    }
    tally.require(
        "truncations",
        &[
            "empty",
            "in the length prefix",
            "mid-header",
            "header only",
            "mid-data",
            "one byte short",
        ],
    );
    assert!(tally.total() >= 1000, "{} truncations", tally.total());
}

#[test]
fn bit_flips_are_detected_or_harmless() {
    let dir = Scratch::new("corrupt-st-flip");
    let path = dir.0.join("params.safetensors");
    let fixtures = fixtures();
    let files: Vec<Vec<u8>> = fixtures
        .iter()
        .map(|(_, fx)| save_bytes(fx, &path))
        .collect();
    // One fixed seed; positions uniform over all bits of the file.
    let mut rng = ChaCha8Rng::seed_from_u64(0x5afe_7e25);
    let mut tally = Tally::default();
    let mut accepted = 0;
    for i in 0..1500 {
        let k = i % fixtures.len();
        let (label, fx) = (&fixtures[k].0, &fixtures[k].1);
        let file = &files[k];
        let n = header_len(file);
        let flips = random_flips(&mut rng, file.len(), i % 4 == 3);
        let region = |bit: usize| match bit / 8 {
            b if b < 8 => "length prefix",
            b if b < 8 + n => "header",
            _ => "data",
        };
        let mut regions: Vec<&str> = flips.iter().map(|&b| region(b)).collect();
        regions.dedup();
        let class = if regions.iter().all(|r| *r == regions[0]) {
            regions[0]
        } else {
            "mixed"
        };
        tally.hit(class);
        let case = format!("{label}: flip bits {flips:?} ({class})");
        let damaged = flipped(file, &flips);
        for (which, out) in ["load_like", "load"]
            .iter()
            .zip(run_case(fx, &path, &damaged, &case))
        {
            let case = format!("{case}, {which}");
            match out {
                Ok(true) => {
                    // Harmless: identical tensors. A data flip can never be harmless.
                    assert_ne!(class, "data", "case {case}: a data flip was accepted");
                    accepted += 1;
                }
                Ok(false) => panic!("case {case}: accepted with wrong content"),
                Err(e) => {
                    assert_names(&e.to_string(), &path, &case);
                    match (&e, class) {
                        (ParamsError::ContentMismatch { .. }, _) => {}
                        (_, "data") => panic!("case {case}: expected ContentMismatch, got {e}"),
                        (ParamsError::Corrupt { .. } | ParamsError::Unverified { .. }, _) => {}
                        _ => panic!("case {case}: unexpected error variant: {e}"),
                    }
                }
            }
        }
    }
    eprintln!("bit flips: {accepted} loads accepted with identical tensors");
    tally.require("bit flips", &["length prefix", "header", "data", "mixed"]);
    assert!(tally.total() >= 1000);
}

#[test]
fn files_without_a_content_hash_need_the_explicit_unverified_load() {
    let dir = Scratch::new("corrupt-st-legacy");
    let p: Params<f64> = Mlp::new(&[2, 3, 1], Activation::Tanh).init(4);
    // A file as written before content hashes (or by another program): no metadata.
    let legacy = dir.0.join("legacy.safetensors");
    let data: Vec<Vec<u8>> = p
        .tensors()
        .iter()
        .map(|t| t.data().iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<_> = p
        .iter()
        .zip(&data)
        .map(|((n, t), b)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F64, t.dims().to_vec(), b)
                    .unwrap();
            (n, v)
        })
        .collect();
    std::fs::write(&legacy, safetensors::serialize(views, &None).unwrap()).unwrap();
    let e = p.load_like(&legacy).unwrap_err();
    assert!(matches!(e, ParamsError::Unverified { .. }), "{e}");
    assert_names(&e.to_string(), &legacy, &"legacy load_like");
    assert!(e.to_string().contains("load_like_unverified"), "{e}");
    let e = Params::<f64>::load(&legacy).unwrap_err();
    assert!(matches!(e, ParamsError::Unverified { .. }), "{e}");
    assert_eq!(p.load_like_unverified(&legacy).unwrap(), p);

    // The unverified load still checks a hash that is present.
    let hashed = dir.0.join("hashed.safetensors");
    p.save(&hashed).unwrap();
    let mut bytes = std::fs::read(&hashed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&hashed, &bytes).unwrap();
    let e = p.load_like_unverified(&hashed).unwrap_err();
    assert!(matches!(e, ParamsError::ContentMismatch { .. }), "{e}");
    assert_names(&e.to_string(), &hashed, &"hashed, unverified load");
}
