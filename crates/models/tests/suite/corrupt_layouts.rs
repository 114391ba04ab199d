//! Damaged data folders: ≥ 1,000 seeded cases per layout (Omniglot's
//! `alphabet/character/*.png`, Mini-ImageNet's `images/` + `split.csv`), each
//! one mutation of a small valid fixture: missing or empty folders, stray
//! files, a directory where a file should be (and the reverse), PNGs of the
//! wrong size or colour type, truncated or bit-flipped PNGs, non-UTF-8 names,
//! dangling links, truncated or malformed split files, and requests for more
//! classes or examples than the set has.
//!
//! Every case states its expected outcome up front: either a typed
//! `DataError` of a given variant naming a given path (and the message must
//! contain that path), or acceptance with a given content (an `ImageSet`
//! compared whole: classes, names, paths and pixels). A panic fails the test
//! with the case printed.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_names, flip_file, no_panic, sync_tree, truncate_file, Scratch, Tally, Tree};
use models::data::image::write_png;
use models::{
    load_mini_imagenet, load_omniglot, ClassSplit, DataError, EpisodeSampler, ImageSet,
    OmniglotOptions, SplitSize, Splits,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a case must produce.
enum Expect {
    /// An error of this variant (by name) naming this path.
    Error(&'static str, PathBuf),
    /// Success with exactly this content.
    Sets(Vec<ImageSet>),
}

fn variant(e: &DataError) -> (&'static str, &Path) {
    match e {
        DataError::Missing { path, .. } => ("Missing", path),
        DataError::Io { path, .. } => ("Io", path),
        DataError::BadImage { path, .. } => ("BadImage", path),
        DataError::WrongImageSize { path, .. } => ("WrongImageSize", path),
        DataError::WrongColorType { path, .. } => ("WrongColorType", path),
        DataError::UnexpectedEntry { path, .. } => ("UnexpectedEntry", path),
        DataError::NonUtf8Name { path } => ("NonUtf8Name", path),
        DataError::BadSplitFile { path, .. } => ("BadSplitFile", path),
        DataError::EmptySplit { path, .. } => ("EmptySplit", path),
        DataError::ClassSplit { path, .. } => ("ClassSplit", path),
        DataError::TooFewExamples { path, .. } => ("TooFewExamples", path),
        DataError::TooFewClasses { path, .. } => ("TooFewClasses", path),
    }
}

fn check(case: &str, got: Result<Vec<ImageSet>, DataError>, want: &Expect) {
    match (got, want) {
        (Err(e), Expect::Error(v, p)) => {
            let (gv, gp) = variant(&e);
            assert_eq!((gv, gp), (*v, p.as_path()), "case {case}: {e}");
            assert_names(&e.to_string(), p, &case);
        }
        (Ok(sets), Expect::Sets(want)) => {
            assert!(sets == *want, "case {case}: accepted with other content")
        }
        (Err(e), Expect::Sets(_)) => panic!("case {case}: expected success, got {e}"),
        (Ok(_), Expect::Error(v, p)) => {
            panic!("case {case}: accepted; expected {v} naming {}", p.display())
        }
    }
}

/// A file name that is not valid UTF-8 (Unix only: other systems store names
/// as UTF-16 or UTF-8 and cannot hold one).
#[cfg(unix)]
fn non_utf8(stem: &str, ext: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let mut b = stem.as_bytes().to_vec();
    b.extend_from_slice(b"\xff\xfe");
    b.extend_from_slice(ext.as_bytes());
    std::ffi::OsString::from_vec(b)
}

fn png_bytes(dir: &Path, w: usize, h: usize, ch: usize, data: &[u8]) -> Vec<u8> {
    let p = dir.join("encode.png");
    write_png(&p, w, h, ch, data).unwrap();
    let b = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    b
}

/// A PNG with an alpha channel (gray + alpha or RGBA), which neither loader accepts.
fn alpha_png(dir: &Path, side: u32, rgba: bool) -> Vec<u8> {
    let p = dir.join("alpha.png");
    {
        let f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        let mut enc = png::Encoder::new(f, side, side);
        let (color, n) = if rgba {
            (png::ColorType::Rgba, 4)
        } else {
            (png::ColorType::GrayscaleAlpha, 2)
        };
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&vec![128u8; (side * side) as usize * n])
            .unwrap();
    }
    let b = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    b
}

const NAMES: [&str; 5] = ["notes.txt", "Thumbs.db", "scan.jpg", "README", "a.png.bak"];

// ---------------------------------------------------------------- Omniglot

const ALPHABETS: usize = 2;
const CHARS: usize = 3;
const PER_CHAR: usize = 3;
const SIDE: usize = 8;

fn omni_opts() -> OmniglotOptions {
    OmniglotOptions {
        size: 4,
        source_size: SIDE,
        split: ClassSplit {
            train: SplitSize::Count(4),
            ..ClassSplit::default()
        },
        ..OmniglotOptions::default()
    }
}

fn char_dir(root: &Path, a: usize, c: usize) -> PathBuf {
    root.join(format!("alpha{a}"))
        .join(format!("character{c:02}"))
}

fn image_path(root: &Path, a: usize, c: usize, k: usize) -> PathBuf {
    char_dir(root, a, c).join(format!("{k:02}.png"))
}

#[test]
fn omniglot_layouts() {
    let scratch = Scratch::new("corrupt-omni");
    let root = scratch.0.join("omniglot");
    let mut rng = ChaCha8Rng::seed_from_u64(0x0e61_0e61);
    // Fixture images: random 8×8 gray pixels from the fixed seed.
    let images: Vec<Vec<u8>> = (0..ALPHABETS * CHARS * PER_CHAR)
        .map(|_| {
            let px: Vec<u8> = (0..SIDE * SIDE).map(|_| rng.gen()).collect();
            png_bytes(&scratch.0, SIDE, SIDE, 1, &px)
        })
        .collect();
    let mut tree = Tree::new();
    for a in 0..ALPHABETS {
        for c in 0..CHARS {
            for k in 0..PER_CHAR {
                let b = &images[(a * CHARS + c) * PER_CHAR + k];
                tree.insert(image_path(Path::new(""), a, c, k), b.clone());
            }
        }
    }
    let build = |root: &Path| sync_tree(root, &tree);
    build(&root);
    let Splits { train, test, .. } = load_omniglot(&root, &omni_opts()).unwrap();
    assert_eq!(
        (train.num_classes(), test.num_classes()),
        (4 * 4, 2),
        "the undamaged fixture loads"
    );
    let base = Expect::Sets(vec![train.clone(), test]);

    let mut tally = Tally::default();
    for i in 0..1040 {
        build(&root);
        let (a, c, k) = (
            rng.gen_range(0..ALPHABETS),
            rng.gen_range(0..CHARS),
            rng.gen_range(0..PER_CHAR),
        );
        let img = image_path(&root, a, c, k);
        let chr = char_dir(&root, a, c);
        let alpha = root.join(format!("alpha{a}"));
        let name = NAMES[rng.gen_range(0..NAMES.len())];
        let mut load_root = root.clone();
        let mut opts = omni_opts();
        // Optional episode request after a successful load: (n_way, k + q).
        let mut episode: Option<(usize, usize)> = None;
        let (kind, want) = match i % 20 {
            0 => {
                load_root = root.join("absent");
                ("missing root", Expect::Error("Missing", load_root.clone()))
            }
            1 => {
                load_root = root.join(name);
                std::fs::write(&load_root, b"x").unwrap();
                (
                    "root is a file",
                    Expect::Error("UnexpectedEntry", load_root.clone()),
                )
            }
            2 => {
                for k in 0..PER_CHAR {
                    std::fs::remove_file(image_path(&root, a, c, k)).unwrap();
                }
                ("empty character folder", Expect::Error("Missing", chr))
            }
            3 => {
                for c in 0..CHARS {
                    std::fs::remove_dir_all(char_dir(&root, a, c)).unwrap();
                }
                ("empty alphabet folder", Expect::Error("Missing", alpha))
            }
            4 => {
                let p = chr.join(name);
                std::fs::write(&p, b"stray").unwrap();
                (
                    "stray file in a character folder",
                    Expect::Error("UnexpectedEntry", p),
                )
            }
            5 => {
                let p = alpha.join(name);
                std::fs::write(&p, b"stray").unwrap();
                (
                    "stray file in an alphabet folder",
                    Expect::Error("UnexpectedEntry", p),
                )
            }
            6 => {
                let p = chr.join(if k == 0 { "extra.png" } else { "sub" });
                std::fs::create_dir(&p).unwrap();
                (
                    "directory where a PNG should be",
                    Expect::Error("UnexpectedEntry", p),
                )
            }
            7 => {
                let (w, h) = loop {
                    let wh = (rng.gen_range(1..12), rng.gen_range(1..12));
                    if wh != (SIDE, SIDE) {
                        break wh;
                    }
                };
                std::fs::write(&img, png_bytes(&scratch.0, w, h, 1, &vec![7; w * h])).unwrap();
                (
                    "PNG of the wrong size",
                    Expect::Error("WrongImageSize", img),
                )
            }
            8 => {
                let b = match k {
                    0 => png_bytes(&scratch.0, SIDE, SIDE, 3, &[9; 3 * SIDE * SIDE]),
                    1 => alpha_png(&scratch.0, SIDE as u32, false),
                    _ => alpha_png(&scratch.0, SIDE as u32, true),
                };
                std::fs::write(&img, b).unwrap();
                (
                    "PNG of the wrong colour type",
                    Expect::Error("WrongColorType", img),
                )
            }
            9 => {
                truncate_file(&img, &mut rng);
                ("truncated PNG", Expect::Error("BadImage", img))
            }
            10 => {
                flip_file(&img, &mut rng);
                ("bit-flipped PNG", Expect::Error("BadImage", img))
            }
            11 => {
                let junk: &[u8] = if k == 0 {
                    &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]
                } else {
                    b"text"
                };
                std::fs::write(&img, junk).unwrap();
                ("not a PNG, named .png", Expect::Error("BadImage", img))
            }
            12 => {
                // Rename an alphabet, a character or an image to a non-UTF-8 name.
                let (from, parent, ext) = match k {
                    0 => (alpha.clone(), root.clone(), ""),
                    1 => (chr.clone(), alpha.clone(), ""),
                    _ => (img.clone(), chr.clone(), ".png"),
                };
                let to = parent.join(non_utf8("bad", ext));
                std::fs::rename(&from, &to).unwrap();
                ("non-UTF-8 name", Expect::Error("NonUtf8Name", to))
            }
            13 => {
                // Hidden entries anywhere are skipped.
                let at = [&root, &alpha, &chr][k];
                if c == 0 {
                    std::fs::create_dir(at.join(".git")).unwrap();
                } else {
                    std::fs::write(at.join(".DS_Store"), b"\0\0\0\x01Bud1").unwrap();
                }
                ("hidden entry (accepted)", base_clone(&base))
            }
            14 => {
                std::fs::write(root.join("images_background.zip"), b"PK\x03\x04").unwrap();
                ("archive file at the top (accepted)", base_clone(&base))
            }
            15 => {
                episode = Some((train.num_classes() + 1 + k, 1));
                (
                    "too few classes for an episode",
                    Expect::Error("TooFewClasses", root.clone()),
                )
            }
            16 => {
                episode = Some((2, PER_CHAR + 1 + k));
                (
                    "too few examples for an episode",
                    Expect::Error("TooFewExamples", char_dir(&root, 0, 0)),
                )
            }
            17 => {
                opts.split.train = SplitSize::Count(ALPHABETS * CHARS + k);
                if k == 0 {
                    (
                        "no characters left for the test split",
                        Expect::Error("EmptySplit", root.clone()),
                    )
                } else {
                    (
                        "more training characters than found",
                        Expect::Error("ClassSplit", root.clone()),
                    )
                }
            }
            18 => {
                for a in 0..ALPHABETS {
                    std::fs::remove_dir_all(root.join(format!("alpha{a}"))).unwrap();
                }
                ("no alphabets", Expect::Error("EmptySplit", root.clone()))
            }
            _ => {
                // A dangling symbolic link in place of an image: unreadable.
                std::fs::remove_file(&img).unwrap();
                std::os::unix::fs::symlink(root.join("gone.png"), &img).unwrap();
                ("dangling link as an image", Expect::Error("Io", img))
            }
        };
        tally.hit(kind);
        let case = format!("omniglot #{i}: {kind} (alphabet {a}, character {c}, image {k})");
        let got = no_panic(&case, || {
            let Splits { train, test, .. } = load_omniglot(&load_root, &opts)?;
            if let Some((n, kq)) = episode {
                EpisodeSampler::new(&train, n, kq - 1, 1)?;
            }
            Ok(vec![train, test])
        });
        check(&case, got, &want);
    }
    tally.require("omniglot layouts", &[]);
    assert_eq!(tally.0.len(), 21, "every mutation kind ran");
    assert!(tally.total() >= 1000);
}

fn base_clone(e: &Expect) -> Expect {
    match e {
        Expect::Sets(s) => Expect::Sets(s.clone()),
        Expect::Error(v, p) => Expect::Error(v, p.clone()),
    }
}

// ----------------------------------------------------------- Mini-ImageNet

const CLASSES: usize = 3;
const PER_CLASS: usize = 3;
const MINI: usize = models::data::mini_imagenet::SIZE;

/// Channel-major pixels of image `k` of class `c`: a smooth pattern (so the
/// PNGs stay small) that differs between every image.
fn mini_pixels(c: usize, k: usize) -> Vec<u8> {
    (0..3 * MINI * MINI)
        .map(|i| {
            let (ch, y, x) = (i / (MINI * MINI), (i / MINI) % MINI, i % MINI);
            (40 * c + 15 * k + 70 * ch + x + 2 * y) as u8
        })
        .collect()
}

fn mini_name(c: usize, k: usize) -> String {
    format!("n{c:04}{k:04}.png")
}

/// The set a split file listing `lines` (`(class, image)` pairs in order) must give.
fn mini_oracle(
    root: &Path,
    csv: &Path,
    lines: &[(usize, usize)],
    gray: Option<(usize, usize)>,
) -> ImageSet {
    let mut set = ImageSet::new(root, 3, MINI, MINI);
    let mut order: Vec<usize> = Vec::new();
    for &(c, _) in lines {
        if !order.contains(&c) {
            order.push(c);
        }
    }
    for c in order {
        let imgs = lines
            .iter()
            .filter(|l| l.0 == c)
            .map(|&(c, k)| {
                if gray == Some((c, k)) {
                    gray_plane(c, k).repeat(3)
                } else {
                    mini_pixels(c, k)
                }
            })
            .collect();
        set.add_class(format!("n{c:04}"), csv, imgs);
    }
    set
}

/// A gray image for `(c, k)`: one plane.
fn gray_plane(c: usize, k: usize) -> Vec<u8> {
    mini_pixels(c, k)[..MINI * MINI].to_vec()
}

#[test]
fn mini_imagenet_layouts() {
    let scratch = Scratch::new("corrupt-mini");
    let root = scratch.0.join("mini");
    let images_dir = root.join("images");
    let csv = root.join("train.csv");
    let mut rng = ChaCha8Rng::seed_from_u64(0x3141_5926);
    let pngs: Vec<Vec<u8>> = (0..CLASSES * PER_CLASS)
        .map(|i| {
            png_bytes(
                &scratch.0,
                MINI,
                MINI,
                3,
                &mini_pixels(i / PER_CLASS, i % PER_CLASS),
            )
        })
        .collect();
    // Lines interleave the classes, so first appearance decides class order.
    let lines: Vec<(usize, usize)> = (0..PER_CLASS)
        .flat_map(|k| (0..CLASSES).map(move |c| (c, k)))
        .collect();
    let csv_text = |lines: &[(usize, usize)]| -> String {
        let mut s = String::from("filename,label\n");
        for &(c, k) in lines {
            s.push_str(&format!("{},n{c:04}\n", mini_name(c, k)));
        }
        s
    };
    let full_csv = csv_text(&lines);
    let mut tree = Tree::new();
    for (i, b) in pngs.iter().enumerate() {
        let name = mini_name(i / PER_CLASS, i % PER_CLASS);
        tree.insert(Path::new("images").join(name), b.clone());
    }
    tree.insert("train.csv".into(), full_csv.clone().into_bytes());
    let build = || sync_tree(&root, &tree);
    build();
    let base = mini_oracle(&root, &csv, &lines, None);
    assert!(
        load_mini_imagenet(&root, "train").unwrap() == base,
        "the undamaged fixture loads as the oracle says"
    );

    let mut tally = Tally::default();
    for i in 0..1026 {
        build();
        let (c, k) = (rng.gen_range(0..CLASSES), rng.gen_range(0..PER_CLASS));
        let img = images_dir.join(mini_name(c, k));
        let name = NAMES[rng.gen_range(0..NAMES.len())];
        let mut load_root = root.clone();
        let mut split = "train";
        let mut episode: Option<(usize, usize)> = None;
        let (kind, want) = match i % 19 {
            0 => {
                load_root = root.join("absent");
                ("missing root", Expect::Error("Missing", load_root.clone()))
            }
            1 => {
                std::fs::remove_dir_all(&images_dir).unwrap();
                if k == 0 {
                    std::fs::write(&images_dir, b"x").unwrap();
                    (
                        "images is a file",
                        Expect::Error("UnexpectedEntry", images_dir.clone()),
                    )
                } else {
                    (
                        "missing images folder",
                        Expect::Error("Missing", images_dir.clone()),
                    )
                }
            }
            2 => {
                split = ["val", "test"][k % 2];
                let p = root.join(format!("{split}.csv"));
                if k == 2 {
                    std::fs::create_dir(&p).unwrap();
                    (
                        "split file is a directory",
                        Expect::Error("UnexpectedEntry", p),
                    )
                } else {
                    ("missing split file", Expect::Error("Missing", p))
                }
            }
            3 | 4 => {
                // Truncated split file: the oracle decides from the prefix.
                let cut = rng.gen_range(0..full_csv.len());
                let prefix = &full_csv[..cut];
                std::fs::write(&csv, prefix).unwrap();
                let complete = prefix.lines().count().saturating_sub(1);
                if prefix.is_empty() {
                    (
                        "split file truncated to nothing",
                        Expect::Error("EmptySplit", csv.clone()),
                    )
                } else if !prefix.ends_with('\n') {
                    (
                        "split file cut mid-line",
                        Expect::Error("BadSplitFile", csv.clone()),
                    )
                } else if complete == 0 {
                    (
                        "split file cut after the header",
                        Expect::Error("EmptySplit", csv.clone()),
                    )
                } else {
                    (
                        "split file cut at a line break (accepted: the listed prefix)",
                        Expect::Sets(vec![mini_oracle(&root, &csv, &lines[..complete], None)]),
                    )
                }
            }
            5 => {
                std::fs::remove_file(&img).unwrap();
                ("listed image missing", Expect::Error("Missing", img))
            }
            6 => {
                std::fs::remove_file(&img).unwrap();
                std::fs::create_dir(&img).unwrap();
                (
                    "listed image is a directory",
                    Expect::Error("UnexpectedEntry", img),
                )
            }
            7 => {
                truncate_file(&img, &mut rng);
                ("truncated PNG", Expect::Error("BadImage", img))
            }
            8 => {
                flip_file(&img, &mut rng);
                ("bit-flipped PNG", Expect::Error("BadImage", img))
            }
            9 => {
                let (w, h) = [(80, 84), (84, 83), (28, 28)][k];
                std::fs::write(&img, png_bytes(&scratch.0, w, h, 3, &vec![5; 3 * w * h])).unwrap();
                (
                    "PNG of the wrong size",
                    Expect::Error("WrongImageSize", img),
                )
            }
            10 => {
                std::fs::write(&img, alpha_png(&scratch.0, MINI as u32, k != 0)).unwrap();
                ("PNG with alpha", Expect::Error("WrongColorType", img))
            }
            11 => {
                std::fs::write(
                    &img,
                    png_bytes(&scratch.0, MINI, MINI, 1, &gray_plane(c, k)),
                )
                .unwrap();
                (
                    "grayscale PNG (accepted, channels repeated)",
                    Expect::Sets(vec![mini_oracle(&root, &csv, &lines, Some((c, k)))]),
                )
            }
            12 => {
                // The CSV names a .jpg that is a JPEG (no PNG of that stem).
                std::fs::remove_file(&img).unwrap();
                let jpg = img.with_extension("jpg");
                std::fs::write(&jpg, [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]).unwrap();
                std::fs::write(
                    &csv,
                    full_csv.replace(&mini_name(c, k), &format!("n{c:04}{k:04}.jpg")),
                )
                .unwrap();
                ("JPEG instead of PNG", Expect::Error("BadImage", jpg))
            }
            13 => {
                let bad = ["../train.csv", "sub/x.png", "/etc/hosts"][k];
                std::fs::write(&csv, full_csv.replace(&mini_name(c, k), bad)).unwrap();
                (
                    "split file names a path outside images/",
                    Expect::Error("BadSplitFile", csv.clone()),
                )
            }
            14 => {
                let mut b = full_csv.clone().into_bytes();
                let at = rng.gen_range(0..b.len());
                b.insert(at, 0xFF);
                std::fs::write(&csv, b).unwrap();
                ("split file not UTF-8", Expect::Error("Io", csv.clone()))
            }
            15 => {
                std::fs::write(images_dir.join(name), b"stray").unwrap();
                (
                    "stray unlisted file in images/ (accepted)",
                    Expect::Sets(vec![base.clone()]),
                )
            }
            16 => {
                episode = Some((CLASSES + 1 + k, 1));
                (
                    "too few classes for an episode",
                    Expect::Error("TooFewClasses", root.clone()),
                )
            }
            17 => {
                episode = Some((2, PER_CLASS + 1 + k));
                (
                    "too few examples for an episode",
                    Expect::Error("TooFewExamples", csv.clone()),
                )
            }
            _ => {
                // A malformed line: a missing label or an extra field.
                let line = format!("{},n{c:04}\n", mini_name(c, k));
                let bad = if k == 0 {
                    format!("{}\n", mini_name(c, k))
                } else {
                    format!("{},n{c:04},x\n", mini_name(c, k))
                };
                std::fs::write(&csv, full_csv.replace(&line, &bad)).unwrap();
                (
                    "malformed split line",
                    Expect::Error("BadSplitFile", csv.clone()),
                )
            }
        };
        tally.hit(kind);
        let case = format!("mini-imagenet #{i}: {kind} (class {c}, image {k})");
        let got = no_panic(&case, || {
            let set = load_mini_imagenet(&load_root, split)?;
            if let Some((n, kq)) = episode {
                EpisodeSampler::new(&set, n, kq - 1, 1)?;
            }
            Ok(vec![set])
        });
        check(&case, got, &want);
    }
    tally.require("mini-imagenet layouts", &[]);
    assert!(tally.0.len() >= 19, "every mutation kind ran");
    assert!(tally.total() >= 1000);
}
