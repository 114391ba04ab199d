//! PNG reading and writing (the `png` crate), and area resizing.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::error::DataError;

/// A decoded 8-bit image, channel-major (`[c, h, w]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Channels: 1 (gray) or 3 (RGB).
    pub channels: usize,
    /// Channels stored in the file (after palette and low-bit expansion):
    /// 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA. Loaders use it to refuse a colour
    /// type their data set never has (an alpha channel is dropped on reading,
    /// which could hide the picture).
    pub file_channels: usize,
    /// `channels·height·width` bytes, channel-major.
    pub data: Vec<u8>,
}

fn bad(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::BadImage {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a PNG as `channels` (1 = gray, 3 = RGB) 8-bit planes. Palette and
/// low-bit images are expanded, 16-bit samples are truncated to 8 bits, alpha
/// is dropped, RGB becomes gray by the mean of the three channels, gray
/// becomes RGB by repetition ([`Image::file_channels`] says what the file held).
///
/// The whole file is checked, not only the pixels: every chunk's CRC, the
/// zlib Adler-32 checksum of the image data, and the chunks after it up to
/// `IEND`, so a truncated or bit-flipped file is an error rather than an image
/// with wrong pixels. (The decoder skips an *ancillary* chunk whose CRC fails,
/// e.g. a text comment; such chunks do not change the pixels.)
///
/// # Errors
/// [`DataError::Io`] if the file cannot be read (a directory, a missing file),
/// [`DataError::BadImage`] if it is not a complete, intact PNG (a JPEG is
/// reported as such: only PNG is supported).
pub fn read_png(path: &Path, channels: usize) -> Result<Image, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Err(bad(
            path,
            "this is a JPEG file; only PNG is supported (convert the images to PNG)",
        ));
    }
    let mut decoder = png::Decoder::new(bytes.as_slice());
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    decoder.ignore_checksums(false);
    let mut reader = decoder.read_info().map_err(|e| bad(path, e.to_string()))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(path, e.to_string()))?;
    reader
        .finish()
        .map_err(|e| bad(path, format!("after the image data: {e}")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let src_ch = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(bad(path, "indexed colour was not expanded")),
    };
    let line = info.line_size;
    let mut data = vec![0u8; channels * w * h];
    for y in 0..h {
        let row = &buf[y * line..y * line + w * src_ch];
        for x in 0..w {
            let px = &row[x * src_ch..(x + 1) * src_ch];
            let (r, g, b) = if src_ch >= 3 {
                (px[0], px[1], px[2])
            } else {
                (px[0], px[0], px[0])
            };
            if channels == 1 {
                let v = if src_ch >= 3 {
                    ((r as u32 + g as u32 + b as u32 + 1) / 3) as u8
                } else {
                    r
                };
                data[y * w + x] = v;
            } else {
                for (c, v) in [r, g, b].into_iter().enumerate() {
                    data[c * w * h + y * w + x] = v;
                }
            }
        }
    }
    Ok(Image {
        width: w,
        height: h,
        channels,
        file_channels: src_ch,
        data,
    })
}

/// Writes an 8-bit PNG from channel-major data (1 channel = gray, 3 = RGB).
/// Useful for fixtures and for exporting samples.
///
/// # Panics
/// If `channels` is not 1 or 3, or `data` has the wrong length.
#[track_caller]
pub fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    channels: usize,
    data: &[u8],
) -> std::io::Result<()> {
    assert!(
        channels == 1 || channels == 3,
        "write_png: {channels} channels (1 or 3 supported)"
    );
    assert_eq!(
        data.len(),
        width * height * channels,
        "write_png: {} bytes for {channels}×{height}×{width}",
        data.len()
    );
    let mut enc = png::Encoder::new(
        BufWriter::new(File::create(path)?),
        width as u32,
        height as u32,
    );
    enc.set_color(if channels == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    });
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().map_err(std::io::Error::other)?;
    // Interleave channel-major planes into pixel order.
    let mut px = vec![0u8; data.len()];
    for i in 0..width * height {
        for c in 0..channels {
            px[i * channels + c] = data[c * width * height + i];
        }
    }
    wr.write_image_data(&px).map_err(std::io::Error::other)?;
    wr.finish().map_err(std::io::Error::other)
}

/// Weights of output pixel `o` over input pixels for an area (box) resize of
/// `n_in → n_out`: output pixel `o` covers `[o·s, (o+1)·s)` with `s = n_in/n_out`,
/// and each input pixel weighs its overlap with that interval divided by `s`.
fn area_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
    let s = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let (lo, hi) = (o as f64 * s, (o + 1) as f64 * s);
            let mut w = Vec::new();
            let mut i = lo.floor() as usize;
            while (i as f64) < hi && i < n_in {
                let overlap = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
                if overlap > 0.0 {
                    w.push((i, overlap / s));
                }
                i += 1;
            }
            w
        })
        .collect()
}

/// Area-average resize of one `h × w` plane to `oh × ow` (box filter with
/// exact fractional coverage; for integer factors this is the block mean).
/// Values are rounded to the nearest byte.
///
/// ```
/// use models::data::image::resize_area;
/// // 4×4 → 2×2: each output is the mean of a 2×2 block.
/// let src = [0, 0, 100, 100, 0, 0, 100, 100, 10, 20, 30, 40, 30, 40, 50, 60];
/// assert_eq!(resize_area(&src, 4, 4, 2, 2), vec![0, 100, 25, 45]);
/// ```
pub fn resize_area(src: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<u8> {
    assert_eq!(
        src.len(),
        h * w,
        "resize_area: {} bytes for {h}×{w}",
        src.len()
    );
    let (wy, wx) = (area_weights(h, oh), area_weights(w, ow));
    // Horizontal pass to [h, ow], then vertical to [oh, ow].
    let mut tmp = vec![0.0f64; h * ow];
    for y in 0..h {
        for (ox, ws) in wx.iter().enumerate() {
            tmp[y * ow + ox] = ws.iter().map(|&(x, a)| a * src[y * w + x] as f64).sum();
        }
    }
    let mut out = vec![0u8; oh * ow];
    for (oy, ws) in wy.iter().enumerate() {
        for ox in 0..ow {
            let v: f64 = ws.iter().map(|&(y, a)| a * tmp[y * ow + ox]).sum();
            out[oy * ow + ox] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Checks that `path` is a folder (`is_dir`) or a file (`!is_dir`).
///
/// # Errors
/// [`DataError::Missing`] if nothing is there, [`DataError::UnexpectedEntry`]
/// if the other kind is (a file where a folder should be, or the reverse);
/// both name the path and say what was looked for (`what`).
pub(crate) fn require(path: &Path, is_dir: bool, what: &str) -> Result<(), DataError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() == is_dir => Ok(()),
        Ok(_) => Err(DataError::UnexpectedEntry {
            path: path.to_path_buf(),
            expected: what.to_string(),
            found: entry_kind(path),
        }),
        Err(_) => Err(DataError::Missing {
            path: path.to_path_buf(),
            what: what.to_string(),
        }),
    }
}

/// Sorted entries of a folder, with errors naming the folder.
pub(crate) fn sorted_entries(dir: &Path, what: &str) -> Result<Vec<std::path::PathBuf>, DataError> {
    require(dir, true, what)?;
    let rd = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        v.push(e.path());
    }
    v.sort();
    Ok(v)
}

/// The UTF-8 file name of `path`.
///
/// # Errors
/// [`DataError::NonUtf8Name`] naming the path.
pub(crate) fn utf8_name(path: &Path) -> Result<&str, DataError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| DataError::NonUtf8Name {
            path: path.to_path_buf(),
        })
}

/// Whether the entry's name starts with `.` (`.DS_Store`, editor files): such
/// entries are skipped by the loaders. A non-UTF-8 name is not hidden.
pub(crate) fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().first() == Some(&b'.'))
}

/// What kind of entry `path` is, for error messages.
pub(crate) fn entry_kind(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => "directory".into(),
        Ok(_) => "file".into(),
        Err(e) => format!("entry ({e})"),
    }
}

/// Refuses an image whose file held a colour type outside `accepted`
/// (counts of [`Image::file_channels`]).
///
/// # Errors
/// [`DataError::WrongColorType`] naming the file.
pub(crate) fn check_color(
    img: &Image,
    path: &Path,
    accepted: &[usize],
    expected: &str,
) -> Result<(), DataError> {
    if accepted.contains(&img.file_channels) {
        return Ok(());
    }
    let found = match img.file_channels {
        1 => "grayscale",
        2 => "grayscale with alpha",
        3 => "RGB",
        _ => "RGB with alpha",
    };
    Err(DataError::WrongColorType {
        path: path.to_path_buf(),
        expected: expected.into(),
        found: found.into(),
    })
}
