//! Mini-ImageNet (Vinyals et al. 2016; Ravi & Larochelle split) in its usual
//! layout: `root/images/<file>` and `root/{train,val,test}.csv` with lines
//! `filename,label` (a `filename,label` header line is skipped).
//!
//! Images must be 84×84 RGB **PNG**: this crate is pure Rust with only a PNG
//! decoder. The usual release ships JPEGs; convert them once (for example
//! `mogrify -format png images/*.jpg`). If the CSV names `x.jpg` and only
//! `x.png` exists, the PNG is used.

use std::path::{Path, PathBuf};

use crate::data::image::read_png;
use crate::data::ImageSet;
use crate::error::DataError;

/// Side length of Mini-ImageNet images.
pub const SIZE: usize = 84;

/// Loads one split (`"train"`, `"val"` or `"test"`): classes in order of first
/// appearance in the CSV, values in [0, 1], shape `[3, 84, 84]`.
///
/// # Errors
/// [`DataError::Missing`] for a missing root, images folder, CSV or image;
/// [`DataError::BadSplitFile`] for a malformed CSV line; [`DataError::EmptySplit`]
/// for a CSV with no entries; [`DataError::BadImage`] / [`DataError::WrongImageSize`]
/// naming the image.
pub fn load_mini_imagenet(root: impl AsRef<Path>, split: &str) -> Result<ImageSet, DataError> {
    let root = root.as_ref();
    if !root.is_dir() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
            what: "Mini-ImageNet root folder".into(),
        });
    }
    let images = root.join("images");
    if !images.is_dir() {
        return Err(DataError::Missing {
            path: images,
            what: "Mini-ImageNet images folder".into(),
        });
    }
    let csv = root.join(format!("{split}.csv"));
    if !csv.is_file() {
        return Err(DataError::Missing {
            path: csv,
            what: format!("split file for `{split}`"),
        });
    }
    let text = std::fs::read_to_string(&csv).map_err(|source| DataError::Io {
        path: csv.clone(),
        source,
    })?;
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
    let png = f.with_extension("png");
    if png.is_file() {
        return Ok(png);
    }
    Err(DataError::Missing {
        path: f.to_path_buf(),
        what: "image listed in the split file".into(),
    })
}
