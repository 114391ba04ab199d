//! Files: atomic writes, tensors as safetensors, exact floats in JSON.
//!
//! Every file is written to a temporary file in the same directory, flushed to
//! disk and renamed over the target, so a crash leaves either the old file or
//! the new one, never a torn one (rename within one directory is atomic on
//! POSIX file systems and on NTFS).
//!
//! Every failure names the file: [`BloError::Io`] for the operating system's
//! errors, [`BloError::Corrupt`] for content that is not what was expected.
//!
//! ```
//! use blo::io::{load_tensors, save_tensors};
//! use tape::Tensor;
//! let dir = std::env::temp_dir().join(format!("blo-io-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("w.safetensors");
//! let w = vec![Tensor::new(&[2, 2], vec![1.0_f32, -2.0, 3.5, 0.25]), Tensor::scalar(7.0_f32)];
//! let names = vec!["theta.0".to_string(), "theta.1".to_string()];
//! save_tensors(&path, &names, &w, None).unwrap();
//! let back: Vec<Tensor<f32>> = load_tensors(&path, &names).unwrap();
//! assert_eq!(back, w);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tape::{Float, Tensor};

use crate::error::BloError;

fn io_err(path: &Path, source: std::io::Error) -> BloError {
    BloError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> BloError {
    BloError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes `bytes` to `path` atomically and durably (see [`tape::fs::write_atomic`]:
/// temporary file in the same directory, `fsync`, rename, `fsync` of the
/// directory). The directory must exist.
///
/// # Errors
/// [`BloError::Io`] naming `path` if any step fails; the temporary file is
/// removed on failure.
///
/// ```
/// let p = std::env::temp_dir().join(format!("blo-atomic-doc-{}.txt", std::process::id()));
/// blo::io::write_atomic(&p, b"hello").unwrap();
/// assert_eq!(std::fs::read(&p).unwrap(), b"hello");
/// # std::fs::remove_file(&p).unwrap();
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BloError> {
    tape::fs::write_atomic(path, bytes).map_err(|e| io_err(path, e))
}

/// Reads a whole file, naming it on failure.
///
/// # Errors
/// [`BloError::Io`] with `path`.
pub fn read_file(path: &Path) -> Result<Vec<u8>, BloError> {
    fs::read(path).map_err(|e| io_err(path, e))
}

/// The safetensors dtype of `F`: `F32` or `F64`.
pub fn dtype_of<F: Float>() -> Dtype {
    if F::NAME == "f32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

/// Little-endian bytes of a tensor's data in `F`'s own width.
fn tensor_bytes<F: Float>(t: &Tensor<F>) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.numel() * if F::NAME == "f32" { 4 } else { 8 });
    for &x in t.data() {
        if F::NAME == "f32" {
            out.extend_from_slice(&(x.to_f64_prim() as f32).to_le_bytes());
        } else {
            out.extend_from_slice(&x.to_f64_prim().to_le_bytes());
        }
    }
    out
}

/// Serialises named tensors to safetensors bytes (dtype `F32` or `F64` after
/// `F`), with optional string metadata in the header.
///
/// # Panics
/// If `names` and `tensors` differ in length.
#[track_caller]
pub fn tensors_to_bytes<F: Float>(
    names: &[String],
    tensors: &[Tensor<F>],
    metadata: Option<HashMap<String, String>>,
) -> Vec<u8> {
    assert_eq!(
        names.len(),
        tensors.len(),
        "tensors_to_bytes: {} names for {} tensors",
        names.len(),
        tensors.len()
    );
    let bytes: Vec<Vec<u8>> = tensors.iter().map(tensor_bytes).collect();
    let views: Vec<(String, TensorView<'_>)> = names
        .iter()
        .zip(tensors)
        .zip(&bytes)
        .map(|((n, t), b)| {
            let view = TensorView::new(dtype_of::<F>(), t.dims().to_vec(), b)
                .expect("byte length matches shape by construction");
            (n.clone(), view)
        })
        .collect();
    let mut out =
        safetensors::serialize(views, &metadata).expect("in-memory safetensors serialisation");
    sort_header(&mut out);
    out
}

/// Rewrites a safetensors file's JSON header with its keys (tensor names and
/// metadata) sorted, in place. `safetensors` writes them in `HashMap` order,
/// which is random per process: without this, the same θ saved by two
/// processes (two runs, or the ranks of a distributed run) gives different
/// bytes and fingerprints. The header keeps its length (same entries, same
/// compact JSON), so the data offsets stay valid.
fn sort_header(bytes: &mut [u8]) {
    use std::collections::BTreeMap;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte length")) as usize;
    let header = &bytes[8..8 + n];
    let text = std::str::from_utf8(header).expect("safetensors writes a UTF-8 header");
    let body = text.trim_end_matches(' ');
    let mut top: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(body).expect("safetensors writes a JSON object");
    if let Some(meta) = top.get_mut("__metadata__") {
        let sorted: BTreeMap<String, String> =
            serde_json::from_value(meta.take()).expect("metadata maps strings to strings");
        *meta = serde_json::to_value(sorted).expect("strings serialise");
    }
    let sorted = serde_json::to_vec(&top).expect("JSON values serialise");
    assert_eq!(
        sorted.len(),
        body.len(),
        "sort_header: the sorted header changed length"
    );
    bytes[8..8 + sorted.len()].copy_from_slice(&sorted);
}

/// Saves named tensors as a safetensors file, atomically (see [`write_atomic`]).
///
/// # Errors
/// [`BloError::Io`] naming the file.
///
/// # Panics
/// If `names` and `tensors` differ in length.
#[track_caller]
pub fn save_tensors<F: Float>(
    path: &Path,
    names: &[String],
    tensors: &[Tensor<F>],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), BloError> {
    write_atomic(path, &tensors_to_bytes(names, tensors, metadata))
}

/// Parses safetensors bytes read from `path` and returns the tensors called
/// `names`, in that order, as `F`. The dtype stored must be `F`'s (no silent
/// conversion), and the file must hold exactly these names.
///
/// # Errors
/// [`BloError::Corrupt`] naming `path` and what is wrong: an unparsable
/// header, a missing or extra tensor, a dtype other than `F`'s.
pub fn tensors_from_bytes<F: Float>(
    path: &Path,
    bytes: &[u8],
    names: &[String],
) -> Result<Vec<Tensor<F>>, BloError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| corrupt(path, format!("not a safetensors file: {e}")))?;
    if st.len() != names.len() {
        let mut found: Vec<String> = st.names().into_iter().cloned().collect();
        found.sort();
        return Err(corrupt(
            path,
            format!(
                "holds {} tensors {:?}, expected {} {:?}",
                st.len(),
                found,
                names.len(),
                names
            ),
        ));
    }
    let want = dtype_of::<F>();
    names
        .iter()
        .map(|name| {
            let view = st
                .tensor(name)
                .map_err(|_| corrupt(path, format!("tensor {name:?} is missing")))?;
            if view.dtype() != want {
                return Err(corrupt(
                    path,
                    format!(
                        "tensor {name:?} has dtype {:?}, expected {:?} ({})",
                        view.dtype(),
                        want,
                        F::NAME
                    ),
                ));
            }
            let data: Vec<F> = if F::NAME == "f32" {
                view.data()
                    .chunks_exact(4)
                    .map(|c| F::from_f64(f32::from_le_bytes(c.try_into().unwrap()) as f64))
                    .collect()
            } else {
                view.data()
                    .chunks_exact(8)
                    .map(|c| F::from_f64(f64::from_le_bytes(c.try_into().unwrap())))
                    .collect()
            };
            Ok(Tensor::new(view.shape(), data))
        })
        .collect()
}

/// Loads the tensors called `names` from a safetensors file, in that order.
///
/// # Errors
/// [`BloError::Io`] if the file cannot be read; [`BloError::Corrupt`] as in
/// [`tensors_from_bytes`].
pub fn load_tensors<F: Float>(path: &Path, names: &[String]) -> Result<Vec<Tensor<F>>, BloError> {
    let bytes = read_file(path)?;
    tensors_from_bytes(path, &bytes, names)
}

/// The header metadata (string map) of safetensors bytes read from `path`.
///
/// # Errors
/// [`BloError::Corrupt`] naming `path` if the header does not parse.
pub fn metadata_from_bytes(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>, BloError> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| corrupt(path, format!("not a safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// FNV-1a 64-bit hash of `bytes`, written as 16 hex digits: a cheap content
/// fingerprint that ties a checkpoint's JSON to its tensor file.
///
/// h₀ = 0xcbf29ce484222325, h ← (h ⊕ byte)·0x100000001b3 (mod 2⁶⁴).
///
/// ```
/// // The FNV-1a test vector for the empty string is the offset basis.
/// assert_eq!(blo::io::fingerprint(b""), "cbf29ce484222325");
/// assert_eq!(blo::io::fingerprint(b"a"), "af63dc4c8601ec8c");
/// ```
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A tensor stored exactly in JSON: its shape and the IEEE bit patterns of its
/// elements (`f32` bits widened to `u64`), so a round trip is bit-exact
/// whatever the JSON float parser does.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExactTensor {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// `"f32"` or `"f64"`.
    pub dtype: String,
    /// The bit patterns, row-major.
    pub bits: Vec<u64>,
}

impl ExactTensor {
    /// Captures a tensor exactly.
    ///
    /// ```
    /// use blo::io::ExactTensor;
    /// use tape::Tensor;
    /// let t = Tensor::vector(vec![0.1_f64, -3.0e-300]);
    /// let e = ExactTensor::from_tensor(&t);
    /// let json = serde_json::to_string(&e).unwrap();
    /// let back: ExactTensor = serde_json::from_str(&json).unwrap();
    /// assert_eq!(back.to_tensor::<f64>().unwrap(), t);
    /// ```
    pub fn from_tensor<F: Float>(t: &Tensor<F>) -> Self {
        ExactTensor {
            shape: t.dims().to_vec(),
            dtype: F::NAME.to_string(),
            bits: t.data().iter().map(|&x| float_to_bits(x)).collect(),
        }
    }

    /// The tensor back, as `F`.
    ///
    /// # Errors
    /// A description of the mismatch if the dtype is not `F`'s or the number of
    /// elements does not match the shape.
    pub fn to_tensor<F: Float>(&self) -> Result<Tensor<F>, String> {
        if self.dtype != F::NAME {
            return Err(format!("stored as {}, expected {}", self.dtype, F::NAME));
        }
        self.values_f64()?;
        Ok(Tensor::new(
            &self.shape[..],
            self.bits.iter().map(|&b| float_from_bits::<F>(b)).collect(),
        ))
    }
}

impl ExactTensor {
    /// The values as `f64` (exact for both dtypes), after checking the dtype
    /// tag, that the number of values matches the shape and that `f32`
    /// patterns fit in 32 bits.
    ///
    /// # Errors
    /// A description of what does not fit.
    ///
    /// ```
    /// use blo::io::ExactTensor;
    /// let t = ExactTensor { shape: vec![2], dtype: "f32".into(), bits: vec![0x3f80_0000, 0] };
    /// assert_eq!(t.values_f64().unwrap(), [1.0, 0.0]);
    /// let bad = ExactTensor { shape: vec![3], ..t };
    /// assert!(bad.values_f64().is_err());
    /// ```
    pub fn values_f64(&self) -> Result<Vec<f64>, String> {
        let n = self
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("shape {:?} overflows", self.shape))?;
        if n != self.bits.len() {
            return Err(format!(
                "shape {:?} needs {n} elements, {} stored",
                self.shape,
                self.bits.len()
            ));
        }
        match self.dtype.as_str() {
            "f64" => Ok(self.bits.iter().map(|&b| f64::from_bits(b)).collect()),
            "f32" => self
                .bits
                .iter()
                .map(|&b| {
                    u32::try_from(b)
                        .map(|b| f32::from_bits(b) as f64)
                        .map_err(|_| format!("f32 bit pattern {b:#x} wider than 32 bits"))
                })
                .collect(),
            d => Err(format!("dtype {d:?}, expected \"f32\" or \"f64\"")),
        }
    }
}

/// The IEEE bit pattern of `x` (`f32` bits widened to `u64`).
///
/// ```
/// assert_eq!(blo::io::float_to_bits(1.0_f32), 0x3f80_0000);
/// assert_eq!(blo::io::float_to_bits(1.0_f64), 0x3ff0_0000_0000_0000);
/// ```
pub fn float_to_bits<F: Float>(x: F) -> u64 {
    if F::NAME == "f32" {
        (x.to_f64_prim() as f32).to_bits() as u64
    } else {
        x.to_f64_prim().to_bits()
    }
}

/// Inverse of [`float_to_bits`].
///
/// ```
/// assert_eq!(blo::io::float_from_bits::<f32>(0x3f80_0000), 1.0);
/// ```
pub fn float_from_bits<F: Float>(b: u64) -> F {
    if F::NAME == "f32" {
        F::from_f64(f32::from_bits(b as u32) as f64)
    } else {
        F::from_f64(f64::from_bits(b))
    }
}

/// Serialises a value to pretty JSON and writes it atomically.
///
/// # Errors
/// [`BloError::Io`] naming the file.
pub fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), BloError> {
    let mut s = serde_json::to_string_pretty(value).map_err(|e| {
        io_err(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

/// Reads and parses a JSON file.
///
/// # Errors
/// [`BloError::Io`] if it cannot be read; [`BloError::Corrupt`] naming the
/// file and the parser's complaint if it does not parse as `T`.
pub fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BloError> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(path, format!("bad JSON: {e}")))
}

/// `dir/name` as a `PathBuf` (a small helper for checkpoint layouts).
pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
