//! Safetensors files: bit-exact round trips in f32 and f64, stable names in
//! the header, atomic writes, and errors naming the tensor or the path.

use std::path::PathBuf;

use models::{Activation, Conv4, Mlp, Model, Params, ParamsError};

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("models-st-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn roundtrip_f64_and_f32_bit_for_bit() {
    let dir = tmp_dir("roundtrip");
    let m = Conv4::omniglot(5).with_filters(3);
    let p64: Params<f64> = m.init(11);
    p64.save(dir.join("a.safetensors")).unwrap();
    let back = p64.load_like(dir.join("a.safetensors")).unwrap();
    assert_eq!(back.names(), p64.names());
    for (a, b) in p64.tensors().iter().zip(back.tensors()) {
        assert_eq!(a.dims(), b.dims());
        assert!(a
            .data()
            .iter()
            .zip(b.data())
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
    let p32: Params<f32> = m.init(11);
    p32.save(dir.join("b.safetensors")).unwrap();
    let back = Params::<f32>::load(dir.join("b.safetensors")).unwrap();
    // `load` returns names sorted; compare by name.
    for (name, t) in p32.iter() {
        let u = back.get(name).unwrap();
        assert!(
            t.data()
                .iter()
                .zip(u.data())
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}"
        );
    }
    // Only the final files remain: the temporary file was renamed away.
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["a.safetensors", "b.safetensors"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn header_has_stable_names_and_dtypes() {
    // Format: 8-byte little-endian header length, then a JSON header whose keys
    // are the tensor names with {"dtype": "F32", "shape": [...], ...}.
    let dir = tmp_dir("header");
    let p: Params<f32> = Mlp::new(&[2, 3, 1], Activation::Tanh).init(0);
    let path = dir.join("m.safetensors");
    p.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    for name in [
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.weight",
        "layers.1.bias",
    ] {
        assert!(header.contains(&format!("\"{name}\"")), "{header}");
    }
    assert!(
        header.contains("\"dtype\":\"F32\"") && header.contains("\"shape\":[3,2]"),
        "{header}"
    );
    // Data size: 4 bytes per scalar.
    assert_eq!(bytes.len() - 8 - n, 4 * p.num_scalars());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn mismatches_name_the_tensor() {
    let dir = tmp_dir("mismatch");
    let small: Params<f64> = Mlp::new(&[2, 3, 1], Activation::Tanh).init(0);
    let path = dir.join("small.safetensors");
    small.save(&path).unwrap();

    // Missing tensor: a deeper net needs layers.2.*.
    let deep: Params<f64> = Mlp::new(&[2, 3, 1, 1], Activation::Tanh).init(0);
    let e = deep.load_like(&path).unwrap_err();
    assert!(
        matches!(&e, ParamsError::MissingTensor { name, .. } if name == "layers.2.weight"),
        "{e}"
    );
    assert!(
        e.to_string().contains("small.safetensors") && e.to_string().contains("layers.2.weight")
    );

    // Wrong shape.
    let wide: Params<f64> = Mlp::new(&[2, 4, 1], Activation::Tanh).init(0);
    let e = wide.load_like(&path).unwrap_err();
    assert!(
        matches!(&e, ParamsError::WrongShape { name, expected, found, .. } if name == "layers.0.weight" && expected == &[4, 2] && found == &[3, 2]),
        "{e}"
    );

    // Wrong dtype: an f64 file read as f32.
    let as32: Params<f32> = Mlp::new(&[2, 3, 1], Activation::Tanh).init(0);
    let e = as32.load_like(&path).unwrap_err();
    assert!(
        matches!(&e, ParamsError::WrongDtype { name, .. } if name == "layers.0.weight"),
        "{e}"
    );
    assert!(
        e.to_string().contains("F64") && e.to_string().contains("F32"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_and_corrupt_files_name_the_path() {
    let dir = tmp_dir("corrupt");
    let p: Params<f64> = Mlp::new(&[1, 1], Activation::Tanh).init(0);
    let missing = dir.join("nope.safetensors");
    let e = p.load_like(&missing).unwrap_err();
    assert!(
        matches!(e, ParamsError::Io { .. }) && e.to_string().contains("nope.safetensors"),
        "{e}"
    );

    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let e = p.load_like(&bad).unwrap_err();
    assert!(
        matches!(e, ParamsError::Corrupt { .. }) && e.to_string().contains("bad.safetensors"),
        "{e}"
    );

    // A truncated valid file.
    let good = dir.join("good.safetensors");
    p.save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 3]).unwrap();
    assert!(matches!(
        p.load_like(&bad).unwrap_err(),
        ParamsError::Corrupt { .. }
    ));

    // Saving into a missing folder is an I/O error naming the target.
    let e = p.save(dir.join("no/such/dir/x.safetensors")).unwrap_err();
    assert!(e.to_string().contains("x.safetensors"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn model_roundtrip_gives_same_outputs() {
    let dir = tmp_dir("outputs");
    let m = Mlp::new(&[2, 5, 1], Activation::Softplus);
    let p: Params<f64> = m.init(5);
    p.save(dir.join("p.safetensors")).unwrap();
    let q = m
        .init::<f64>(6)
        .load_like(dir.join("p.safetensors"))
        .unwrap();
    assert_eq!(p, q);
    std::fs::remove_dir_all(dir).unwrap();
}
