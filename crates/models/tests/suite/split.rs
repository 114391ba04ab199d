//! Class splits: sizes as counts, fractions and "rest"; the errors say how
//! many classes were found and what the split asks for; splitting and
//! appending image sets keeps every image and rotation.

use models::{ClassSplit, DataError, ImageSet, SplitSize, Splits};

fn split(train: &str, val: &str, test: &str) -> ClassSplit {
    ClassSplit {
        train: train.parse().unwrap(),
        val: val.parse().unwrap(),
        test: test.parse().unwrap(),
    }
}

#[test]
fn sizes_resolve_as_counts_fractions_and_rest() {
    // 10 classes: 5 + 2 + rest 3.
    assert_eq!(split("5", "2", "rest").resolve(10, "d").unwrap(), [5, 2, 3]);
    // round(0.6·10) = 6, round(0.25·10) = round(2.5) = 3 (half away from zero), rest 1.
    assert_eq!(
        split("0.6", "0.25", "rest").resolve(10, "d").unwrap(),
        [6, 3, 1]
    );
    // rest first: 10 − 0 − 4 = 6.
    assert_eq!(split("rest", "0", "4").resolve(10, "d").unwrap(), [6, 0, 4]);
    // Unused classes are allowed: 3 + 0 + 2 of 10.
    assert_eq!(split("3", "0", "2").resolve(10, "d").unwrap(), [3, 0, 2]);
    // "1" is a count, "1.0" the fraction 1.
    assert_eq!("1".parse::<SplitSize>().unwrap(), SplitSize::Count(1));
    assert_eq!(
        "1.0".parse::<SplitSize>().unwrap(),
        SplitSize::Fraction(1.0)
    );
    assert!("1.5".parse::<SplitSize>().unwrap_err().contains("[0, 1]"));
    assert!("half".parse::<SplitSize>().unwrap_err().contains("rest"));
}

#[test]
fn from_sizes_fills_the_missing_ones() {
    let c = SplitSize::Count;
    let d = ClassSplit::from_sizes(None, None, None, c(1200));
    assert_eq!(d, ClassSplit::default());
    let d = ClassSplit::from_sizes(Some(c(5)), None, None, c(1200));
    assert_eq!((d.train, d.val, d.test), (c(5), c(0), SplitSize::Rest));
    let d = ClassSplit::from_sizes(None, Some(c(1)), Some(c(3)), c(1200));
    assert_eq!((d.train, d.val, d.test), (SplitSize::Rest, c(1), c(3)));
}

#[test]
fn errors_say_what_was_found_and_asked() {
    let e = split("10", "0", "rest")
        .resolve(10, "/data/hand")
        .unwrap_err();
    assert!(matches!(&e, DataError::EmptySplit { split, .. } if split == "test"));
    assert_eq!(
        e.to_string(),
        "/data/hand: empty split `test`: 10 classes found; the class split asks for \
         train 10, validation 0, test rest, which gives 10 train, 0 validation, 0 test"
    );
    let e = split("0.04", "0", "rest").resolve(10, "/d").unwrap_err();
    assert!(
        matches!(&e, DataError::EmptySplit { split, .. } if split == "train"),
        "{e}"
    );
    let e = split("8", "2", "1").resolve(10, "/d").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/d: 10 classes found, but the class split asks for train 8, validation 2, test 1: \
         the splits add up to 11 classes (8 + 2 + 1)"
    );
    let e = split("rest", "0", "rest").resolve(10, "/d").unwrap_err();
    assert!(e.to_string().contains("at most one split"), "{e}");
}

#[test]
fn apply_keeps_classes_in_order_and_images_intact() {
    let mut set = ImageSet::new("mem", 1, 2, 2);
    for c in 0..5u8 {
        let imgs = (0..2u8).map(|k| vec![10 * c + k, 0, 0, 1]).collect();
        set.add_class(format!("c{c}"), "mem", imgs);
    }
    set.add_rotations(); // classes 5.. are rotated views sharing images
    let Splits { train, val, test } = split("2", "1", "rest").apply(&set).unwrap();
    assert_eq!(
        (train.num_classes(), val.num_classes(), test.num_classes()),
        (2, 1, 17)
    );
    for (part, offset) in [(&train, 0), (&val, 2), (&test, 3)] {
        for c in 0..part.num_classes() {
            assert_eq!(part.class(c).name, set.class(offset + c).name);
            for k in 0..2 {
                assert_eq!(part.image::<f64>(c, k), set.image::<f64>(offset + c, k));
            }
        }
    }
    // The test part: classes 3, 4 and the 15 rotated views, 2 images each.
    assert_eq!(test.num_images(), 17 * 2);
    assert_eq!(test.class(2).rotation, 1);
    // Appending the parts back gives the original classes and images.
    let mut back = train.clone();
    back.append(&val);
    back.append(&test);
    assert_eq!(back.num_classes(), set.num_classes());
    for c in 0..set.num_classes() {
        assert_eq!(back.class(c).name, set.class(c).name);
        assert_eq!(back.image::<f32>(c, 1), set.image::<f32>(c, 1));
    }
}
