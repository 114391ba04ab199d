//! Omniglot (Lake et al. 2015) in its standard layout:
//! `root/<alphabet>/<character>/*.png`, 105×105 grayscale.
//!
//! If `root` holds `images_background` and/or `images_evaluation` (the two
//! archives of the official release), the alphabets of both are used.
//! Characters are sorted by `(alphabet, character)` folder name and divided
//! in that order by a [`ClassSplit`]: by default the first 1,200 form the
//! meta-training split, none the validation split and the rest the test split
//! (Finn et al. 2017; Vinyals et al. 2016). Any folder in this layout works,
//! with a split set to its number of characters.
//!
//! Images are resized to `size × size` (28) by area averaging (a box filter with
//! exact fractional coverage, see [`crate::data::image::resize_area`]) and, by
//! default, inverted so that strokes are 1 and background 0. Rotations by
//! 90°, 180°, 270° are added as extra classes (to the training split by
//! default; to the validation and test splits too with `rotate_test`).

use std::path::{Path, PathBuf};

use crate::data::image::{
    check_color, entry_kind, is_hidden, read_png, require, resize_area, sorted_entries, utf8_name,
};
use crate::data::split::{ClassSplit, Splits};
use crate::data::ImageSet;
use crate::error::DataError;

/// Options of [`load_omniglot`].
#[derive(Clone, Debug, PartialEq)]
pub struct OmniglotOptions {
    /// Output side length (default 28).
    pub size: usize,
    /// Expected side length of the files (default 105).
    pub source_size: usize,
    /// Characters per split, in sorted order (default: 1,200 train, 0
    /// validation, the rest test).
    pub split: ClassSplit,
    /// Add 90°/180°/270° rotations to the training split (default true).
    pub rotations: bool,
    /// Add rotations to the validation and test splits too (default false).
    pub rotate_test: bool,
    /// Map pixel v to 255 − v, so strokes (black in the files) are 1 (default true).
    pub invert: bool,
}

impl Default for OmniglotOptions {
    fn default() -> Self {
        OmniglotOptions {
            size: 28,
            source_size: 105,
            split: ClassSplit::default(),
            rotations: true,
            rotate_test: false,
            invert: true,
        }
    }
}

/// Loads Omniglot and divides its characters into train, validation and test
/// splits by `opts.split`.
///
/// The layout is checked strictly, so that a damaged copy is reported rather
/// than loaded with missing or wrong classes:
/// - at the top (`root`, or each of `images_background` / `images_evaluation`
///   if present) every folder is an alphabet; files there (archives, licences)
///   are ignored;
/// - an alphabet folder holds only character folders, at least one;
/// - a character folder holds only `.png` files (any case), at least one, each
///   a grayscale `source_size × source_size` PNG that decodes completely;
/// - names are valid UTF-8; entries whose name starts with `.` (`.DS_Store`)
///   are skipped everywhere.
///
/// # Errors
/// [`DataError::Missing`] if `root` is missing or an alphabet / character
/// folder is empty, [`DataError::UnexpectedEntry`] for a file where a
/// character folder should be or a non-PNG entry in a character folder,
/// [`DataError::NonUtf8Name`], [`DataError::Io`], [`DataError::BadImage`],
/// [`DataError::WrongImageSize`], [`DataError::WrongColorType`] naming the
/// entry, [`DataError::EmptySplit`] if there are no characters or the train
/// or test split would be empty, [`DataError::ClassSplit`] if the split asks
/// for more characters than there are (both errors say how many were found).
pub fn load_omniglot(root: impl AsRef<Path>, opts: &OmniglotOptions) -> Result<Splits, DataError> {
    let root = root.as_ref();
    require(root, true, "Omniglot root folder")?;
    let archives: Vec<PathBuf> = ["images_background", "images_evaluation"]
        .iter()
        .map(|a| root.join(a))
        .filter(|p| p.is_dir())
        .collect();
    let containers = if archives.is_empty() {
        vec![root.to_path_buf()]
    } else {
        archives
    };
    // (alphabet, character, path), sorted by name.
    let mut chars: Vec<(String, String, PathBuf)> = Vec::new();
    for cont in &containers {
        for alpha in sorted_entries(cont, "alphabet container folder")? {
            if is_hidden(&alpha) || !alpha.is_dir() {
                continue;
            }
            let an = utf8_name(&alpha)?.to_string();
            let before = chars.len();
            for ch in sorted_entries(&alpha, "alphabet folder")? {
                if is_hidden(&ch) {
                    continue;
                }
                if !ch.is_dir() {
                    return Err(DataError::UnexpectedEntry {
                        found: entry_kind(&ch),
                        path: ch,
                        expected: "a character folder".into(),
                    });
                }
                let cn = utf8_name(&ch)?.to_string();
                chars.push((an.clone(), cn, ch));
            }
            if chars.len() == before {
                return Err(DataError::Missing {
                    path: alpha,
                    what: "character folders in this alphabet folder".into(),
                });
            }
        }
    }
    chars.sort();
    if chars.is_empty() {
        return Err(DataError::EmptySplit {
            path: root.to_path_buf(),
            split: "all".into(),
            reason: "no <alphabet>/<character>/ folders found".into(),
        });
    }
    // Resolve the split before reading any image (a wrong split fails fast),
    // then read only the characters it uses.
    let counts = opts.split.resolve(chars.len(), root)?;
    let mut all = ImageSet::new(root, 1, opts.size, opts.size);
    for (an, cn, path) in chars.iter().take(counts.iter().sum()) {
        let images = load_character(path, opts)?;
        all.add_class(format!("{an}/{cn}"), path.clone(), images);
    }
    let mut splits = Splits::by_counts(&all, counts);
    if opts.rotations {
        splits.train.add_rotations();
    }
    if opts.rotate_test {
        splits.val.add_rotations();
        splits.test.add_rotations();
    }
    Ok(splits)
}

fn load_character(dir: &Path, opts: &OmniglotOptions) -> Result<Vec<Vec<u8>>, DataError> {
    let mut files = Vec::new();
    for f in sorted_entries(dir, "character folder")? {
        if is_hidden(&f) {
            continue;
        }
        let is_png = f.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !is_png || f.is_dir() {
            return Err(DataError::UnexpectedEntry {
                found: entry_kind(&f),
                path: f,
                expected: "a .png file".into(),
            });
        }
        utf8_name(&f)?;
        files.push(f);
    }
    if files.is_empty() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
            what: "PNG images in this character folder".into(),
        });
    }
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let img = read_png(&f, 1)?;
        check_color(
            &img,
            &f,
            &[1],
            "grayscale (Omniglot's files are 1-bit grayscale)",
        )?;
        if img.width != opts.source_size || img.height != opts.source_size {
            return Err(DataError::WrongImageSize {
                path: f,
                expected_w: opts.source_size,
                expected_h: opts.source_size,
                found_w: img.width,
                found_h: img.height,
            });
        }
        let mut px = resize_area(&img.data, img.height, img.width, opts.size, opts.size);
        if opts.invert {
            px.iter_mut().for_each(|v| *v = 255 - *v);
        }
        out.push(px);
    }
    Ok(out)
}
