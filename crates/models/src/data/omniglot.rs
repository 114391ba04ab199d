//! Omniglot (Lake et al. 2015) in its standard layout:
//! `root/<alphabet>/<character>/*.png`, 105×105 grayscale.
//!
//! If `root` holds `images_background` and/or `images_evaluation` (the two
//! archives of the official release), the alphabets of both are used.
//! Characters are sorted by `(alphabet, character)` folder name; the first
//! `train_characters` (1200) form the meta-training split, the rest the test
//! split (Finn et al. 2017; Vinyals et al. 2016).
//!
//! Images are resized to `size × size` (28) by area averaging (a box filter with
//! exact fractional coverage, see [`crate::data::image::resize_area`]) and, by
//! default, inverted so that strokes are 1 and background 0. Rotations by
//! 90°, 180°, 270° are added as extra classes (to the training split by
//! default; to the test split too with `rotate_test`).

use std::path::{Path, PathBuf};

use crate::data::image::{read_png, resize_area, sorted_entries};
use crate::data::ImageSet;
use crate::error::DataError;

/// Options of [`load_omniglot`].
#[derive(Clone, Debug, PartialEq)]
pub struct OmniglotOptions {
    /// Output side length (default 28).
    pub size: usize,
    /// Expected side length of the files (default 105).
    pub source_size: usize,
    /// Characters in the training split (default 1200).
    pub train_characters: usize,
    /// Add 90°/180°/270° rotations to the training split (default true).
    pub rotations: bool,
    /// Add rotations to the test split too (default false).
    pub rotate_test: bool,
    /// Map pixel v to 255 − v, so strokes (black in the files) are 1 (default true).
    pub invert: bool,
}

impl Default for OmniglotOptions {
    fn default() -> Self {
        OmniglotOptions {
            size: 28,
            source_size: 105,
            train_characters: 1200,
            rotations: true,
            rotate_test: false,
            invert: true,
        }
    }
}

/// Loads Omniglot and returns `(train, test)`.
///
/// # Errors
/// [`DataError::Missing`] if `root` (or a character folder's images) is missing,
/// [`DataError::BadImage`] / [`DataError::WrongImageSize`] naming the image,
/// [`DataError::EmptySplit`] if there are no characters or either split is empty.
pub fn load_omniglot(
    root: impl AsRef<Path>,
    opts: &OmniglotOptions,
) -> Result<(ImageSet, ImageSet), DataError> {
    let root = root.as_ref();
    if !root.is_dir() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
            what: "Omniglot root folder".into(),
        });
    }
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
            if !alpha.is_dir() {
                continue;
            }
            let an = alpha
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            for ch in sorted_entries(&alpha, "alphabet folder")? {
                if ch.is_dir() {
                    let cn = ch
                        .file_name()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    chars.push((an.clone(), cn, ch));
                }
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
    let n_train = opts.train_characters.min(chars.len());
    let mut train = ImageSet::new(root, 1, opts.size, opts.size);
    let mut test = ImageSet::new(root, 1, opts.size, opts.size);
    for (k, (an, cn, path)) in chars.iter().enumerate() {
        let images = load_character(path, opts)?;
        let set = if k < n_train { &mut train } else { &mut test };
        set.add_class(format!("{an}/{cn}"), path.clone(), images);
    }
    for (set, name) in [(&train, "train"), (&test, "test")] {
        if set.num_classes() == 0 {
            return Err(DataError::EmptySplit {
                path: root.to_path_buf(),
                split: name.into(),
                reason: format!(
                    "{} characters found, {} go to the training split",
                    chars.len(),
                    n_train
                ),
            });
        }
    }
    if opts.rotations {
        train.add_rotations();
    }
    if opts.rotate_test {
        test.add_rotations();
    }
    Ok((train, test))
}

fn load_character(dir: &Path, opts: &OmniglotOptions) -> Result<Vec<Vec<u8>>, DataError> {
    let files: Vec<PathBuf> = sorted_entries(dir, "character folder")?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    if files.is_empty() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
            what: "PNG images in this character folder".into(),
        });
    }
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let img = read_png(&f, 1)?;
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
