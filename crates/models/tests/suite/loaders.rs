//! Omniglot and Mini-ImageNet loaders on fixture folders written by the tests
//! themselves (PNG files made with the `png` crate in a temp dir), and every
//! bad-input error.

use std::path::Path;

mod common;

use common::Scratch as TmpDir;
use models::data::image::write_png;
use models::{
    load_mini_imagenet, load_omniglot, ClassSplit, DataError, OmniglotOptions, SplitSize, Splits,
};

/// The grey level of example `k` of character `ch`: distinct for every image.
fn level(ch: usize, k: usize) -> u8 {
    (10 * ch + 3 * k + 1) as u8
}

/// Writes `root/alpha{a}/character{c}/{k}.png`, constant images of `level`.
fn omniglot_fixture(root: &Path, alphabets: usize, chars: usize, per_char: usize) {
    for a in 0..alphabets {
        for c in 0..chars {
            let dir = root
                .join(format!("alpha{a}"))
                .join(format!("character{c:02}"));
            std::fs::create_dir_all(&dir).unwrap();
            for k in 0..per_char {
                let v = level(a * chars + c, k);
                write_png(
                    &dir.join(format!("{k:02}.png")),
                    105,
                    105,
                    1,
                    &vec![v; 105 * 105],
                )
                .unwrap();
            }
        }
    }
}

#[test]
fn omniglot_roundtrip_split_resize_invert_rotate() {
    let tmp = TmpDir::new("omni");
    omniglot_fixture(&tmp.0, 3, 2, 3);
    let opts = OmniglotOptions {
        split: ClassSplit {
            train: SplitSize::Count(4),
            ..ClassSplit::default()
        },
        ..OmniglotOptions::default()
    };
    let Splits { train, test, .. } = load_omniglot(&tmp.0, &opts).unwrap();
    // 6 characters sorted by (alphabet, character): the first 4 train, ×4 with rotations.
    assert_eq!(train.num_classes(), 4 * 4);
    assert_eq!(test.num_classes(), 2);
    assert_eq!(train.image_shape(), [1, 28, 28]);
    assert_eq!(train.class(0).name, "alpha0/character00");
    assert_eq!(train.class(3).name, "alpha1/character01");
    assert_eq!(train.class(4).name, "alpha0/character00/rot90");
    assert_eq!(test.class(0).name, "alpha2/character00");
    // A constant image stays constant under area resizing; inverted: (255 − v)/255.
    for (set, offset) in [(&train, 0), (&test, 4)] {
        for c in 0..set.num_classes().min(4) {
            for k in 0..3 {
                let want = (255 - level(c + offset, k)) as f64 / 255.0;
                let img = set.image::<f64>(c, k);
                assert!(
                    img.iter().all(|&v| v == want),
                    "class {c} example {k}: {want} vs {:?}",
                    &img[..5]
                );
            }
        }
    }
    // Without inversion and rotations.
    let plain = OmniglotOptions {
        split: ClassSplit {
            train: SplitSize::Count(4),
            ..ClassSplit::default()
        },
        rotations: false,
        invert: false,
        ..OmniglotOptions::default()
    };
    let Splits { train, .. } = load_omniglot(&tmp.0, &plain).unwrap();
    assert_eq!(train.num_classes(), 4);
    assert_eq!(train.image::<f32>(1, 2)[0], level(1, 2) as f32 / 255.0);
}

#[test]
fn omniglot_resizes_a_pattern_by_area_and_reads_both_archives() {
    let tmp = TmpDir::new("omni-archives");
    // Left 52 columns black (0), right 53 white (255), in the background archive;
    // one evaluation character. Column o of 28 covers [3.75·o, 3.75·(o+1)).
    let bg = tmp.0.join("images_background/Latin/character01");
    let ev = tmp.0.join("images_evaluation/Greek/character01");
    for d in [&bg, &ev] {
        std::fs::create_dir_all(d).unwrap();
    }
    let img: Vec<u8> = (0..105 * 105)
        .map(|i| if i % 105 < 52 { 0 } else { 255 })
        .collect();
    write_png(&bg.join("a.png"), 105, 105, 1, &img).unwrap();
    write_png(&ev.join("a.png"), 105, 105, 1, &img).unwrap();
    let opts = OmniglotOptions {
        split: ClassSplit {
            train: SplitSize::Count(1),
            ..ClassSplit::default()
        },
        rotations: false,
        invert: false,
        ..OmniglotOptions::default()
    };
    let Splits { train, test, .. } = load_omniglot(&tmp.0, &opts).unwrap();
    // Sorted by alphabet: Greek (evaluation) before Latin (background).
    assert_eq!(train.class(0).name, "Greek/character01");
    assert_eq!(test.class(0).name, "Latin/character01");
    let row: Vec<u8> = train.image::<f64>(0, 0)[..28]
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    // Output column 13 covers [48.75, 52.5): 3.25 black and 0.5 white → 255·0.5/3.75 = 34.
    let want: Vec<u8> = (0..28)
        .map(|o| {
            let (lo, hi) = (3.75 * o as f64, 3.75 * (o + 1) as f64);
            let white = (hi.min(105.0) - lo.max(52.0)).max(0.0);
            (255.0 * white / 3.75).round() as u8
        })
        .collect();
    assert_eq!(row, want);
    assert_eq!(row[13], 34);
}

#[test]
fn omniglot_errors_name_the_path() {
    let tmp = TmpDir::new("omni-errors");
    // Missing root.
    let e = load_omniglot(tmp.0.join("absent"), &OmniglotOptions::default()).unwrap_err();
    assert!(
        matches!(e, DataError::Missing { .. }) && e.to_string().contains("absent"),
        "{e}"
    );
    // Empty root.
    let e = load_omniglot(&tmp.0, &OmniglotOptions::default()).unwrap_err();
    assert!(matches!(e, DataError::EmptySplit { .. }), "{e}");
    // 2 characters: the default split asks for 1,200 training characters.
    omniglot_fixture(&tmp.0, 1, 2, 1);
    let e = load_omniglot(&tmp.0, &OmniglotOptions::default()).unwrap_err();
    assert!(matches!(&e, DataError::ClassSplit { found: 2, .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: 2 classes found, but the class split asks for train 1200, validation 0, \
             test rest: the splits add up to 1200 classes (1200 + 0 + 0)",
            tmp.0.display()
        )
    );
    // Empty test split: both characters go to training.
    let all_train = OmniglotOptions {
        split: ClassSplit {
            train: SplitSize::Count(2),
            ..ClassSplit::default()
        },
        ..OmniglotOptions::default()
    };
    let e = load_omniglot(&tmp.0, &all_train).unwrap_err();
    assert!(
        matches!(&e, DataError::EmptySplit { split, .. } if split == "test"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "{}: empty split `test`: 2 classes found; the class split asks for train 2, \
             validation 0, test rest, which gives 2 train, 0 validation, 0 test",
            tmp.0.display()
        )
    );
    let opts = OmniglotOptions {
        split: ClassSplit {
            train: SplitSize::Count(1),
            ..ClassSplit::default()
        },
        ..OmniglotOptions::default()
    };
    // Wrongly sized image.
    let bad = tmp.0.join("alpha0/character01/99.png");
    write_png(&bad, 100, 105, 1, &vec![0; 100 * 105]).unwrap();
    let e = load_omniglot(&tmp.0, &opts).unwrap_err();
    assert!(
        matches!(&e, DataError::WrongImageSize { path, found_w: 100, found_h: 105, .. } if path == &bad),
        "{e}"
    );
    assert!(
        e.to_string().contains("99.png") && e.to_string().contains("100×105"),
        "{e}"
    );
    // Unreadable image.
    std::fs::write(&bad, b"definitely not a png").unwrap();
    let e = load_omniglot(&tmp.0, &opts).unwrap_err();
    assert!(
        matches!(&e, DataError::BadImage { path, .. } if path == &bad),
        "{e}"
    );
    std::fs::remove_file(&bad).unwrap();
    // A character folder with no images.
    let empty = tmp.0.join("alpha0/character05");
    std::fs::create_dir_all(&empty).unwrap();
    let e = load_omniglot(&tmp.0, &opts).unwrap_err();
    assert!(
        matches!(&e, DataError::Missing { path, .. } if path == &empty),
        "{e}"
    );
}

/// RGB image whose channel planes are constant r, g, b.
fn rgb(r: u8, g: u8, b: u8, side: usize) -> Vec<u8> {
    [r, g, b]
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v, side * side))
        .collect()
}

fn mini_fixture(root: &Path) {
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut csv = String::from("filename,label\n");
    for c in 0..3 {
        for k in 0..4 {
            let name = format!("n{c:04}{k:03}.png");
            write_png(
                &images.join(&name),
                84,
                84,
                3,
                &rgb(c * 50, k * 20, 200, 84),
            )
            .unwrap();
            csv.push_str(&format!("{name},n{c:04}\n"));
        }
    }
    std::fs::write(root.join("train.csv"), csv).unwrap();
}

#[test]
fn mini_imagenet_roundtrip() {
    let tmp = TmpDir::new("mini");
    mini_fixture(&tmp.0);
    let set = load_mini_imagenet(&tmp.0, "train").unwrap();
    assert_eq!(set.num_classes(), 3);
    assert_eq!(set.image_shape(), [3, 84, 84]);
    for c in 0..3 {
        assert_eq!(set.class(c).name, format!("n{c:04}"));
        for k in 0..4 {
            let img = set.image::<f64>(c, k);
            let want = rgb(c as u8 * 50, k as u8 * 20, 200, 84);
            assert!(
                img.iter().zip(&want).all(|(&v, &w)| v == w as f64 / 255.0),
                "class {c} image {k}"
            );
        }
    }
}

#[test]
fn mini_imagenet_errors_name_the_path() {
    let tmp = TmpDir::new("mini-errors");
    let e = load_mini_imagenet(tmp.0.join("absent"), "train").unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }) && e.to_string().contains("absent"));
    let e = load_mini_imagenet(&tmp.0, "train").unwrap_err();
    assert!(e.to_string().contains("images"), "{e}");
    mini_fixture(&tmp.0);
    // Missing split file.
    let e = load_mini_imagenet(&tmp.0, "val").unwrap_err();
    assert!(
        matches!(&e, DataError::Missing { path, .. } if path.ends_with("val.csv")),
        "{e}"
    );
    // Empty split.
    std::fs::write(tmp.0.join("test.csv"), "filename,label\n").unwrap();
    let e = load_mini_imagenet(&tmp.0, "test").unwrap_err();
    assert!(
        matches!(&e, DataError::EmptySplit { path, .. } if path.ends_with("test.csv")),
        "{e}"
    );
    // Malformed line.
    std::fs::write(tmp.0.join("val.csv"), "filename,label\nn0000000.png\n").unwrap();
    let e = load_mini_imagenet(&tmp.0, "val").unwrap_err();
    assert!(matches!(&e, DataError::BadSplitFile { line: 2, .. }), "{e}");
    assert!(e.to_string().contains("val.csv:2"), "{e}");
    // Image listed but absent.
    std::fs::write(tmp.0.join("val.csv"), "gone.png,x\n").unwrap();
    let e = load_mini_imagenet(&tmp.0, "val").unwrap_err();
    assert!(
        matches!(&e, DataError::Missing { path, .. } if path.ends_with("gone.png")),
        "{e}"
    );
    // Wrong size.
    write_png(
        &tmp.0.join("images/small.png"),
        80,
        84,
        3,
        &rgb(1, 2, 3, 1).repeat(80 * 84),
    )
    .unwrap();
    std::fs::write(tmp.0.join("val.csv"), "small.png,x\n").unwrap();
    let e = load_mini_imagenet(&tmp.0, "val").unwrap_err();
    assert!(
        matches!(
            &e,
            DataError::WrongImageSize {
                found_w: 80,
                found_h: 84,
                ..
            }
        ),
        "{e}"
    );
    // A JPEG (the usual release format) is reported as such.
    std::fs::write(
        tmp.0.join("images/photo.jpg"),
        [0xFF, 0xD8, 0xFF, 0xE0, 0, 0],
    )
    .unwrap();
    std::fs::write(tmp.0.join("val.csv"), "photo.jpg,x\n").unwrap();
    let e = load_mini_imagenet(&tmp.0, "val").unwrap_err();
    assert!(
        matches!(&e, DataError::BadImage { .. }) && e.to_string().contains("JPEG"),
        "{e}"
    );
    // …but a PNG of the same stem is used in its place.
    write_png(
        &tmp.0.join("images/other.png"),
        84,
        84,
        3,
        &rgb(9, 9, 9, 84),
    )
    .unwrap();
    std::fs::write(tmp.0.join("val.csv"), "other.jpg,x\n").unwrap();
    assert_eq!(load_mini_imagenet(&tmp.0, "val").unwrap().num_images(), 1);
}

#[test]
fn one_bit_pngs_like_the_official_omniglot_files_are_expanded() {
    // The official Omniglot PNGs are 1-bit grayscale: bit 1 = white background.
    let tmp = TmpDir::new("omni-1bit");
    let dir = tmp.0.join("Alpha/character01");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.png");
    {
        let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut enc = png::Encoder::new(f, 105, 105);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::One);
        let mut w = enc.write_header().unwrap();
        // Rows of 14 bytes (105 bits + padding): all white except a black top-left 8×8 block.
        let mut data = vec![0xFFu8; 14 * 105];
        for row in data.chunks_mut(14).take(8) {
            row[0] = 0x00;
        }
        w.write_image_data(&data).unwrap();
    }
    let img = models::data::image::read_png(&path, 1).unwrap();
    assert_eq!((img.width, img.height), (105, 105));
    assert_eq!((img.data[0], img.data[8], img.data[8 * 105]), (0, 255, 255));
    std::fs::create_dir_all(tmp.0.join("Beta/character01")).unwrap();
    std::fs::copy(&path, tmp.0.join("Beta/character01/a.png")).unwrap();
    let opts = OmniglotOptions {
        split: ClassSplit {
            train: SplitSize::Count(1),
            ..ClassSplit::default()
        },
        rotations: false,
        ..OmniglotOptions::default()
    };
    let Splits { train, .. } = load_omniglot(&tmp.0, &opts).unwrap();
    // Inverted: the black block becomes ink 1 in the top-left output pixel
    // (which covers source pixels [0, 3.75)² ⊂ the 8×8 block), background 0.
    let x = train.image::<f64>(0, 0);
    assert_eq!((x[0], x[27], x[27 * 28 + 27]), (1.0, 0.0, 0.0));
}

#[test]
fn mini_imagenet_pooled_classes_take_a_class_split() {
    let tmp = TmpDir::new("mini-pooled");
    mini_fixture(&tmp.0); // train.csv: 3 classes, no val.csv or test.csv
                          // A test.csv with one more class (n0003), images of class n0000 reused.
    std::fs::write(
        tmp.0.join("test.csv"),
        "filename,label\nn0000000.png,n0003\nn0000001.png,n0003\n",
    )
    .unwrap();
    let all = models::load_mini_imagenet_pooled(&tmp.0).unwrap();
    let names: Vec<&str> = all.classes().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["n0000", "n0001", "n0002", "n0003"]);
    let split = ClassSplit {
        train: SplitSize::Count(2),
        val: SplitSize::Count(1),
        test: SplitSize::Rest,
    };
    let Splits { train, val, test } = split.apply(&all).unwrap();
    assert_eq!(
        (train.num_classes(), val.num_classes(), test.num_classes()),
        (2, 1, 1)
    );
    assert_eq!(val.class(0).name, "n0002");
    assert_eq!(test.image::<f64>(0, 1), all.image::<f64>(3, 1));
    // Asking for more classes than the 4 found names both numbers.
    let e = ClassSplit {
        train: SplitSize::Count(4),
        ..split
    }
    .apply(&all)
    .unwrap_err();
    assert!(e.to_string().contains("4 classes found"), "{e}");
    // No split file at all.
    let empty = TmpDir::new("mini-pooled-empty");
    std::fs::create_dir_all(empty.0.join("images")).unwrap();
    let e = models::load_mini_imagenet_pooled(&empty.0).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e}");
}
