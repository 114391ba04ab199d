//! Mini-ImageNet (Vinyals et al. 2016; Ravi & Larochelle split) in its usual
//! layout: `root/images/<file>` and `root/{train,val,test}.csv` with lines
//! `filename,label` (a `filename,label` header line is skipped).
//!
//! Images must be 84×84 RGB **PNG**: this crate is pure Rust with only a PNG
//! decoder. The usual release ships JPEGs; convert them once (for example
//! `mogrify -format png images/*.jpg`). If the CSV names `x.jpg` and only
//! `x.png` exists, the PNG is used. A grayscale PNG (ImageMagick writes one for
//! a photo whose pixels are all gray) is read as three equal channels; an
//! image with an alpha channel is refused, since reading would drop the alpha.
//!
//! The split file must end with a line break: a file cut in the middle of its
//! last line would otherwise add a class named by a truncated label. File
//! names in it are plain names inside `images/` (no folders, no `..`).

use std::path::{Path, PathBuf};

use crate::data::image::{check_color, entry_kind, read_png, require};
use crate::data::ImageSet;
use crate::error::DataError;

/// Side length of Mini-ImageNet images.
pub const SIZE: usize = 84;

/// Loads one split (`"train"`, `"val"` or `"test"`): classes in order of first
/// appearance in the CSV, values in [0, 1], shape `[3, 84, 84]`.
///
/// # Errors
/// [`DataError::Missing`] for a missing root, images folder, CSV or image;
/// [`DataError::Io`] for a CSV that cannot be read (or is not UTF-8);
/// [`DataError::BadSplitFile`] for a malformed CSV line or a CSV without a
/// final line break; [`DataError::EmptySplit`] for a CSV with no entries;
/// [`DataError::UnexpectedEntry`] for a listed image that is a directory;
/// [`DataError::BadImage`] / [`DataError::WrongImageSize`] /
/// [`DataError::WrongColorType`] naming the image.
pub fn load_mini_imagenet(root: impl AsRef<Path>, split: &str) -> Result<ImageSet, DataError> {
    let root = root.as_ref();
    require(root, true, "Mini-ImageNet root folder")?;
    let images = root.join("images");
    require(&images, true, "Mini-ImageNet images folder")?;
    let csv = root.join(format!("{split}.csv"));
    require(&csv, false, &format!("split file for `{split}`"))?;
    let text = std::fs::read_to_string(&csv).map_err(|source| DataError::Io {
        path: csv.clone(),
        source,
    })?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(DataError::BadSplitFile {
            path: csv.clone(),
            line: text.lines().count(),
            reason: "no line break after the last line: the file looks truncated \
                     (add a final newline if it is complete)"
                .into(),
        });
    }
    // label → list of files, in order of first appearance.
    let mut classes: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.replace(' ', "") == "filename,label") {
            continue;
        }
        let mut parts = line.split(',');
        let (file, label) = match (parts.next(), parts.next(), parts.next()) {
            (Some(f), Some(l), None) if !f.trim().is_empty() && !l.trim().is_empty() => {
                (f.trim(), l.trim())
            }
            _ => {
                return Err(DataError::BadSplitFile {
                    path: csv.clone(),
                    line: i + 1,
                    reason: format!("expected `filename,label`, found `{line}`"),
                })
            }
        };
        if file.contains(['/', '\\']) || file == ".." || file == "." {
            return Err(DataError::BadSplitFile {
                path: csv.clone(),
                line: i + 1,
                reason: format!("`{file}` is not a plain file name inside images/"),
            });
        }
        let path = images.join(file);
        match classes.iter_mut().find(|(l, _)| l == label) {
            Some((_, v)) => v.push(path),
            None => classes.push((label.to_string(), vec![path])),
        }
    }
    if classes.is_empty() {
        return Err(DataError::EmptySplit {
            path: csv,
            split: split.into(),
            reason: "the split file lists no images".into(),
        });
    }
    let mut set = ImageSet::new(root, 3, SIZE, SIZE);
    for (label, files) in classes {
        let mut imgs = Vec::with_capacity(files.len());
        for f in files {
            let f = resolve(&f)?;
            let img = read_png(&f, 3)?;
            check_color(&img, &f, &[1, 3], "RGB or grayscale without alpha")?;
            if img.width != SIZE || img.height != SIZE {
                return Err(DataError::WrongImageSize {
                    path: f,
                    expected_w: SIZE,
                    expected_h: SIZE,
                    found_w: img.width,
                    found_h: img.height,
                });
            }
            imgs.push(img.data);
        }
        set.add_class(label, csv.clone(), imgs);
    }
    Ok(set)
}

fn resolve(f: &Path) -> Result<PathBuf, DataError> {
    if f.is_file() {
        return Ok(f.to_path_buf());
    }
    if f.exists() {
        return Err(DataError::UnexpectedEntry {
            path: f.to_path_buf(),
            expected: "an image file".into(),
            found: entry_kind(f),
        });
    }
    let png = f.with_extension("png");
    if png.is_file() {
        return Ok(png);
    }
    Err(DataError::Missing {
        path: f.to_path_buf(),
        what: "image listed in the split file".into(),
    })
}

/// Every class listed in `train.csv`, `val.csv` and `test.csv` (those that
/// exist, at least one, in that order) as one set, to be divided by a
/// [`crate::ClassSplit`] of your own instead of the files' split.
///
/// ```no_run
/// use models::{load_mini_imagenet_pooled, ClassSplit, SplitSize};
/// let all = load_mini_imagenet_pooled("mini-imagenet")?;
/// let split = ClassSplit { train: SplitSize::Fraction(0.8), val: SplitSize::Count(0), test: SplitSize::Rest };
/// let splits = split.apply(&all)?;
/// # Ok::<(), models::DataError>(())
/// ```
///
/// # Errors
/// [`DataError::Missing`] if none of the three files exists; otherwise as
/// [`load_mini_imagenet`] for each file.
pub fn load_mini_imagenet_pooled(root: impl AsRef<Path>) -> Result<ImageSet, DataError> {
    let root = root.as_ref();
    require(root, true, "Mini-ImageNet root folder")?;
    let mut all = ImageSet::new(root, 3, SIZE, SIZE);
    let mut any = false;
    for split in ["train", "val", "test"] {
        if root.join(format!("{split}.csv")).exists() {
            all.append(&load_mini_imagenet(root, split)?);
            any = true;
        }
    }
    if !any {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
            what: "split files train.csv, val.csv or test.csv".into(),
        });
    }
    Ok(all)
}
