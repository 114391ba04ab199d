//! Corrupt PNG images as read by `read_png` (the reader under both loaders):
//! every truncation and ≥ 1,000 seeded bit flips of small PNGs in the colour
//! types the loaders meet (8-bit gray, 1-bit gray as in the official Omniglot
//! files, RGB, RGBA, and a gray image carrying an ancillary text chunk).
//!
//! "Accepted with wrong content" means: `read_png` succeeds with pixels that
//! differ from the undamaged file's. It must never happen. PNG guards every
//! chunk with a CRC; the decoder skips an *ancillary* chunk whose CRC fails
//! (text, timestamps), so a flip may be accepted only if every flipped bit lies
//! in an ancillary chunk and the pixels are identical. Any flip in the
//! signature or a critical chunk (IHDR, IDAT, IEND) must be a `BadImage`
//! naming the file. Every truncation must be a `BadImage` naming the file.

mod common;

use std::path::Path;

use common::{assert_names, flipped, no_panic, random_flips, Scratch, Tally};
use models::data::image::{read_png, write_png, Image};
use models::DataError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn encode(
    path: &Path,
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    text: bool,
    data: &[u8],
) {
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(f, w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    if text {
        enc.add_text_chunk("Comment".into(), "fixture with an ancillary chunk".into())
            .unwrap();
    }
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(data).unwrap();
    wr.finish().unwrap();
}

/// `(label, file bytes)` of the fixtures, pixels from a fixed seed.
fn fixtures(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut px = |n: usize| -> Vec<u8> { (0..n).map(|_| rng.gen()).collect() };
    let p = dir.join("fixture.png");
    let mut out = Vec::new();
    let read = |label, out: &mut Vec<_>| out.push((label, std::fs::read(&p).unwrap()));
    write_png(&p, 9, 7, 1, &px(9 * 7)).unwrap();
    read("gray8 9x7", &mut out);
    write_png(&p, 6, 5, 3, &px(6 * 5 * 3)).unwrap();
    read("rgb8 6x5", &mut out);
    use png::{BitDepth, ColorType};
    // 1-bit rows of 13 pixels: 2 bytes each.
    encode(
        &p,
        13,
        11,
        ColorType::Grayscale,
        BitDepth::One,
        false,
        &px(2 * 11),
    );
    read("gray1 13x11", &mut out);
    encode(
        &p,
        5,
        4,
        ColorType::Rgba,
        BitDepth::Eight,
        false,
        &px(5 * 4 * 4),
    );
    read("rgba8 5x4", &mut out);
    encode(
        &p,
        7,
        7,
        ColorType::Grayscale,
        BitDepth::Eight,
        true,
        &px(7 * 7),
    );
    read("gray8 7x7 + tEXt", &mut out);
    write_png(&p, 24, 16, 3, &px(24 * 16 * 3)).unwrap();
    read("rgb8 24x16", &mut out);
    out
}

/// For each byte of a PNG, the name of the chunk it belongs to (or "signature").
fn chunk_map(bytes: &[u8]) -> Vec<String> {
    let mut map = vec!["signature".to_string(); 8.min(bytes.len())];
    let mut at = 8;
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let name = String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned();
        let end = (at + 12 + len).min(bytes.len());
        map.extend(std::iter::repeat_n(name, end - at));
        at = end;
    }
    assert_eq!(map.len(), bytes.len(), "fixture parses into whole chunks");
    map
}

/// Critical chunks have an upper-case first letter (PNG spec, section 5.4).
fn is_ancillary(chunk: &str) -> bool {
    chunk != "signature" && chunk.as_bytes()[0].is_ascii_lowercase()
}

/// Reads `path` as gray and as RGB.
fn read_both(path: &Path) -> [Result<Image, DataError>; 2] {
    [read_png(path, 1), read_png(path, 3)]
}

fn expect_bad_image(out: &Result<Image, DataError>, path: &Path, case: &str) {
    match out {
        Err(e @ DataError::BadImage { path: p, .. }) => {
            assert_eq!(p, path, "case {case}");
            assert_names(&e.to_string(), path, &case);
        }
        Err(e) => panic!("case {case}: expected BadImage, got {e}"),
        Ok(_) => panic!("case {case}: a damaged PNG was accepted"),
    }
}

#[test]
fn every_truncation_is_a_bad_image_naming_the_file() {
    let dir = Scratch::new("corrupt-png-trunc");
    let path = dir.0.join("image.png");
    let mut tally = Tally::default();
    for (label, full) in fixtures(&dir.0) {
        let map = chunk_map(&full);
        for len in 0..full.len() {
            let class = match len {
                0 => "empty".to_string(),
                l if l + 1 == full.len() => "one byte short".to_string(),
                l if map[l] == "IEND" && map[l - 1] != "IEND" => "all but IEND".to_string(),
                l => format!("in {}", map[l]),
            };
            tally.hit(class.as_str());
            let case = format!("{label}: first {len} of {} bytes ({class})", full.len());
            std::fs::write(&path, &full[..len]).unwrap();
            for out in no_panic(&case, || read_both(&path)) {
                expect_bad_image(&out, &path, &case);
            }
        }
    }
    tally.require(
        "PNG truncations",
        &[
            "empty",
            "in signature",
            "in IHDR",
            "in IDAT",
            "in tEXt",
            "all but IEND",
            "in IEND",
            "one byte short",
        ],
    );
    assert!(tally.total() >= 1000, "{} truncations", tally.total());
}

#[test]
fn bit_flips_are_errors_or_land_in_skipped_ancillary_chunks() {
    let dir = Scratch::new("corrupt-png-flip");
    let path = dir.0.join("image.png");
    let fixtures = fixtures(&dir.0);
    let reference: Vec<[Image; 2]> = fixtures
        .iter()
        .map(|(_, b)| {
            std::fs::write(&path, b).unwrap();
            read_both(&path).map(Result::unwrap)
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0x0b17_f11b);
    let mut tally = Tally::default();
    let mut harmless = 0;
    for i in 0..1500 {
        let k = i % fixtures.len();
        let (label, file) = (&fixtures[k].0, &fixtures[k].1);
        let map = chunk_map(file);
        let flips = random_flips(&mut rng, file.len(), i % 4 == 3);
        let mut chunks: Vec<&str> = flips.iter().map(|&b| map[b / 8].as_str()).collect();
        chunks.sort();
        chunks.dedup();
        let all_ancillary = chunks.iter().all(|c| is_ancillary(c));
        let class = if chunks.len() == 1 {
            format!("in {}", chunks[0])
        } else {
            "several chunks".into()
        };
        tally.hit(class.as_str());
        let case = format!("{label}: flip bits {flips:?} ({class})");
        std::fs::write(&path, flipped(file, &flips)).unwrap();
        for (out, want) in no_panic(&case, || read_both(&path))
            .iter()
            .zip(&reference[k])
        {
            match out {
                Ok(img) if all_ancillary => {
                    assert_eq!(img, want, "case {case}: accepted with other pixels");
                    harmless += 1;
                }
                _ => expect_bad_image(out, &path, &case),
            }
        }
    }
    eprintln!("PNG bit flips: {harmless} reads accepted (ancillary chunk, identical pixels)");
    tally.require(
        "PNG bit flips",
        &[
            "in signature",
            "in IHDR",
            "in IDAT",
            "in IEND",
            "in tEXt",
            "several chunks",
        ],
    );
    assert!(tally.total() >= 1000);
}
