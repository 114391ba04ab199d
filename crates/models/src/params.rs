//! Named parameter lists: specification, seeded initialisation, counting, and
//! safetensors files.
//!
//! A model is a pure function of its parameters; [`Params`] is the flat,
//! ordered list of named tensors it is evaluated at. The order of
//! [`Params::tensors`] is the order of the `params` slice every
//! `forward` takes, and names follow PyTorch's `state_dict` style
//! (`layers.0.weight`), so saved files open in PyTorch or JAX under the same keys.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use safetensors::{Dtype, SafeTensors};
use tape::fs::Fnv1a64;
use tape::{Float, Real, Tape, Tensor, Var};

use crate::error::ParamsError;

/// How a parameter tensor is drawn.
///
/// `fan_in`/`fan_out` come from the [`ParamSpec`]: for a weight `[out, in]` they
/// are `in` and `out`; for a convolution kernel `[o, c, kh, kw]` they are
/// `c·kh·kw` and `o·kh·kw` (PyTorch's convention).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros (biases, batch-norm shifts).
    Zeros,
    /// All ones (batch-norm scales).
    Ones,
    /// A constant.
    Constant(f64),
    /// PyTorch's default for `Linear`/`Conv2d` weights and biases:
    /// U(−1/√fan_in, 1/√fan_in).
    TorchDefault,
    /// Kaiming (He) normal for ReLU nets: N(0, 2/fan_in).
    KaimingNormal,
    /// Kaiming (He) uniform: U(−√(6/fan_in), √(6/fan_in)).
    KaimingUniform,
    /// Xavier (Glorot) normal: N(0, 2/(fan_in + fan_out)).
    XavierNormal,
    /// Xavier (Glorot) uniform: U(−√(6/(fan_in+fan_out)), √(6/(fan_in+fan_out))).
    XavierUniform,
    /// N(0, σ²).
    Normal(f64),
    /// U(lo, hi).
    Uniform(f64, f64),
}

impl Init {
    /// Draws `n` values for a tensor with the given fans.
    pub fn sample<R: Rng>(&self, rng: &mut R, n: usize, fan_in: usize, fan_out: usize) -> Vec<f64> {
        let fi = fan_in.max(1) as f64;
        let fo = fan_out.max(1) as f64;
        let uniform = |rng: &mut R, b: f64| -> Vec<f64> {
            if b == 0.0 {
                return vec![0.0; n];
            }
            let u = Uniform::new_inclusive(-b, b);
            (0..n).map(|_| u.sample(rng)).collect()
        };
        let normal = |rng: &mut R, s: f64| -> Vec<f64> {
            let d = Normal::new(0.0, s).expect("finite, non-negative standard deviation");
            (0..n).map(|_| d.sample(rng)).collect()
        };
        match *self {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Constant(c) => vec![c; n],
            Init::TorchDefault => uniform(rng, 1.0 / fi.sqrt()),
            Init::KaimingNormal => normal(rng, (2.0 / fi).sqrt()),
            Init::KaimingUniform => uniform(rng, (6.0 / fi).sqrt()),
            Init::XavierNormal => normal(rng, (2.0 / (fi + fo)).sqrt()),
            Init::XavierUniform => uniform(rng, (6.0 / (fi + fo)).sqrt()),
            Init::Normal(s) => normal(rng, s),
            Init::Uniform(lo, hi) => {
                let u = Uniform::new_inclusive(lo, hi);
                (0..n).map(|_| u.sample(rng)).collect()
            }
        }
    }
}

/// One parameter of a model: its stable name, shape, fans and initialiser.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Stable name, e.g. `layers.0.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Fan-in used by the initialiser.
    pub fan_in: usize,
    /// Fan-out used by the initialiser.
    pub fan_out: usize,
    /// How the tensor is drawn.
    pub init: Init,
}

impl ParamSpec {
    /// A spec with the given fields.
    pub fn new(
        name: impl Into<String>,
        shape: &[usize],
        fan_in: usize,
        fan_out: usize,
        init: Init,
    ) -> Self {
        ParamSpec {
            name: name.into(),
            shape: shape.to_vec(),
            fan_in,
            fan_out,
            init,
        }
    }
    /// Number of scalars.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Draws every parameter of `specs` from one ChaCha8 stream seeded with `seed`,
/// in spec order. Same seed → same numbers on every machine.
pub fn init_params<F: Float>(specs: &[ParamSpec], seed: u64) -> Params<F> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = Params::new();
    for s in specs {
        let v = s.init.sample(&mut rng, s.numel(), s.fan_in, s.fan_out);
        p.push(
            s.name.clone(),
            Tensor::new(&s.shape[..], v.into_iter().map(F::from_f64).collect()),
        );
    }
    p
}

/// An ordered list of named tensors: a model's parameters (or their gradients).
///
/// ```
/// use models::{Params, Mlp, Model, Activation};
/// let net = Mlp::new(&[3, 4, 2], Activation::Tanh);
/// let p: Params<f64> = net.init(7);
/// assert_eq!(p.names(), ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]);
/// assert_eq!(p.num_scalars(), 3 * 4 + 4 + 4 * 2 + 2);
/// ```
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Params<F> {
    names: Vec<String>,
    tensors: Vec<Tensor<F>>,
}

impl<F: Float> Params<F> {
    /// An empty list.
    pub fn new() -> Self {
        Params {
            names: Vec::new(),
            tensors: Vec::new(),
        }
    }
    /// A list from names and tensors.
    ///
    /// # Panics
    /// If the lengths differ or a name repeats.
    #[track_caller]
    pub fn from_parts(names: Vec<String>, tensors: Vec<Tensor<F>>) -> Self {
        assert_eq!(
            names.len(),
            tensors.len(),
            "Params::from_parts: {} names, {} tensors",
            names.len(),
            tensors.len()
        );
        let mut p = Params::new();
        for (n, t) in names.into_iter().zip(tensors) {
            p.push(n, t);
        }
        p
    }
    /// Appends a named tensor.
    ///
    /// # Panics
    /// If the name is already present.
    #[track_caller]
    pub fn push(&mut self, name: impl Into<String>, t: Tensor<F>) {
        let name = name.into();
        assert!(
            !self.names.contains(&name),
            "Params::push: duplicate parameter name `{name}`"
        );
        self.names.push(name);
        self.tensors.push(t);
    }
    /// Names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
    /// Tensors, in order (the order `forward` expects).
    pub fn tensors(&self) -> &[Tensor<F>] {
        &self.tensors
    }
    /// Tensors, mutably.
    pub fn tensors_mut(&mut self) -> &mut [Tensor<F>] {
        &mut self.tensors
    }
    /// Consumes the list into its tensors.
    pub fn into_tensors(self) -> Vec<Tensor<F>> {
        self.tensors
    }
    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// Total number of scalars (the parameter count).
    pub fn num_scalars(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }
    /// The tensor with this name.
    pub fn get(&self, name: &str) -> Option<&Tensor<F>> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.tensors[i])
    }
    /// `(name, tensor)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<F>)> {
        self.names
            .iter()
            .map(|s| s.as_str())
            .zip(self.tensors.iter())
    }
    /// Records every tensor as a differentiable leaf on `tape`, in order.
    pub fn vars<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>) -> Vec<Var<'t, T>> {
        self.tensors
            .iter()
            .map(|t| tape.var(&t.map(T::from_base)))
            .collect()
    }
    /// All scalars concatenated in order (for flat optimisers and norms).
    pub fn flatten(&self) -> Vec<F> {
        self.tensors
            .iter()
            .flat_map(|t| t.data().iter().copied())
            .collect()
    }
    /// The same names and shapes with the scalars from `flat` (inverse of [`Params::flatten`]).
    ///
    /// # Panics
    /// If `flat.len()` differs from [`Params::num_scalars`].
    #[track_caller]
    pub fn with_flat(&self, flat: &[F]) -> Self {
        assert_eq!(
            flat.len(),
            self.num_scalars(),
            "Params::with_flat: {} values for {} parameters",
            flat.len(),
            self.num_scalars()
        );
        let mut at = 0;
        let tensors = self
            .tensors
            .iter()
            .map(|t| {
                let n = t.numel();
                at += n;
                Tensor::new(t.shape(), flat[at - n..at].to_vec())
            })
            .collect();
        Params {
            names: self.names.clone(),
            tensors,
        }
    }

    /// Writes the tensors to a safetensors file with dtype `F` (`F32` or `F64`),
    /// atomically and durably (see [`tape::fs::write_atomic`]), so a crash
    /// never leaves a half-written file under `path`.
    ///
    /// The header's `__metadata__` holds `{"models.content_hash": "fnv1a64:…"}`:
    /// the [`Fnv1a64`] hash of every tensor's name, dtype, shape and bytes (see
    /// [`CONTENT_HASH_KEY`]), which [`Params::load`] and [`Params::load_like`]
    /// check, so a corrupted file is refused rather than loaded with wrong values.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ParamsError> {
        let path = path.as_ref();
        let dtype = dtype_of::<F>();
        let bytes: Vec<Vec<u8>> = self.tensors.iter().map(to_bytes).collect();
        let mut views = Vec::with_capacity(self.len());
        for ((name, t), b) in self.names.iter().zip(&self.tensors).zip(&bytes) {
            let v =
                safetensors::tensor::TensorView::new(dtype, t.dims().to_vec(), b).map_err(|e| {
                    ParamsError::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!("tensor `{name}`: {e}"),
                    }
                })?;
            views.push((name.as_str(), v));
        }
        let hash = content_hash(
            views
                .iter()
                .map(|(n, v)| (*n, v.dtype(), v.shape(), v.data())),
        );
        let metadata = HashMap::from([(CONTENT_HASH_KEY.to_string(), format_hash(hash))]);
        let buf =
            safetensors::serialize(views, &Some(metadata)).map_err(|e| ParamsError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        tape::fs::write_atomic(path, &buf).map_err(|source| ParamsError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a safetensors file with exactly the names, shapes and dtype of
    /// `self` (typically a freshly initialised model), returning the file's
    /// values in `self`'s order. Extra tensors in the file are ignored (but
    /// covered by the content hash).
    ///
    /// # Errors
    /// [`ParamsError::Io`] / [`ParamsError::Corrupt`] naming the path;
    /// [`ParamsError::ContentMismatch`] if the content hash does not match
    /// (the file was altered after it was written);
    /// [`ParamsError::Unverified`] if the file has no content hash (written by
    /// another program or before hashes were added: see
    /// [`Params::load_like_unverified`]);
    /// [`ParamsError::MissingTensor`], [`ParamsError::WrongShape`],
    /// [`ParamsError::WrongDtype`] naming the tensor.
    pub fn load_like(&self, path: impl AsRef<Path>) -> Result<Self, ParamsError> {
        let path = path.as_ref();
        let buf = read_file(path)?;
        self.load_like_from(path, &parse(path, &buf, Verify::Required)?)
    }

    /// [`Params::load_like`] for files without a content hash: safetensors
    /// files written by other programs (PyTorch, JAX) or by this crate before
    /// hashes were added. A hash that is present is still checked; only its
    /// absence is tolerated. Structural checks (header, offsets, names, shapes,
    /// dtypes) are the same; a flipped bit in the data of an unhashed file
    /// cannot be detected, which is why this is a separate, explicit call.
    ///
    /// # Errors
    /// As [`Params::load_like`], except [`ParamsError::Unverified`].
    pub fn load_like_unverified(&self, path: impl AsRef<Path>) -> Result<Self, ParamsError> {
        let path = path.as_ref();
        let buf = read_file(path)?;
        self.load_like_from(path, &parse(path, &buf, Verify::IfPresent)?)
    }

    fn load_like_from(&self, path: &Path, st: &SafeTensors<'_>) -> Result<Self, ParamsError> {
        let mut out = Params::new();
        for (name, t) in self.iter() {
            let view = st.tensor(name).map_err(|_| {
                let mut available: Vec<String> = st.names().into_iter().cloned().collect();
                available.sort();
                ParamsError::MissingTensor {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    available,
                }
            })?;
            if view.shape() != t.dims() {
                return Err(ParamsError::WrongShape {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    expected: t.dims().to_vec(),
                    found: view.shape().to_vec(),
                });
            }
            out.push(name, from_view::<F>(path, name, &view)?);
        }
        Ok(out)
    }

    /// Reads every tensor of a safetensors file written by [`Params::save`]
    /// (dtype must be `F`), in name order.
    ///
    /// # Errors
    /// As [`Params::load_like`] (the content hash is required), and
    /// [`ParamsError::WrongDtype`] for a tensor of another dtype.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ParamsError> {
        let path = path.as_ref();
        let buf = read_file(path)?;
        let st = parse(path, &buf, Verify::Required)?;
        let mut views = st.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Params::new();
        for (name, view) in views {
            let t = from_view::<F>(path, &name, &view)?;
            out.push(name, t);
        }
        Ok(out)
    }
}

/// The `__metadata__` key under which [`Params::save`] stores the content hash,
/// as `fnv1a64:` followed by 16 lower-case hex digits.
///
/// The hash is [`Fnv1a64`] over the tensors sorted by name, each contributing
/// `len(name), name, len(dtype), dtype, rank, dims…, len(data), data` with every
/// length and dimension as a little-endian `u64` and `dtype` the safetensors
/// name (`F32`, `F64`). Names, dtypes and shapes are covered as well as the
/// bytes, so a flipped bit in a name or a shape is caught too.
pub const CONTENT_HASH_KEY: &str = "models.content_hash";

/// [`Fnv1a64`] of `(name, dtype, shape, bytes)` entries, as [`CONTENT_HASH_KEY`] describes.
fn content_hash<'a>(entries: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>) -> u64 {
    let mut entries: Vec<_> = entries.collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Fnv1a64::new();
    let mut field = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for (name, dtype, shape, data) in entries {
        field(name.as_bytes());
        field(format!("{dtype:?}").as_bytes());
        let dims: Vec<u8> = shape
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        field(&dims);
        field(data);
    }
    h.finish()
}

fn format_hash(h: u64) -> String {
    format!("fnv1a64:{h:016x}")
}

fn dtype_of<F: Float>() -> Dtype {
    if F::NAME == "f32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

fn to_bytes<F: Float>(t: &Tensor<F>) -> Vec<u8> {
    if F::NAME == "f32" {
        t.data()
            .iter()
            .flat_map(|x| (x.to_f64_prim() as f32).to_le_bytes())
            .collect()
    } else {
        t.data()
            .iter()
            .flat_map(|x| x.to_f64_prim().to_le_bytes())
            .collect()
    }
}

fn from_view<F: Float>(
    path: &Path,
    name: &str,
    v: &safetensors::tensor::TensorView<'_>,
) -> Result<Tensor<F>, ParamsError> {
    let want = dtype_of::<F>();
    if v.dtype() != want {
        return Err(ParamsError::WrongDtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: format!("{want:?}"),
            found: format!("{:?}", v.dtype()),
        });
    }
    let data: Vec<F> = if want == Dtype::F32 {
        v.data()
            .chunks_exact(4)
            .map(|c| F::from_f64(f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64))
            .collect()
    } else {
        v.data()
            .chunks_exact(8)
            .map(|c| F::from_f64(f64::from_le_bytes(c.try_into().expect("8 bytes"))))
            .collect()
    };
    Ok(Tensor::new(v.shape(), data))
}

fn read_file(path: &Path) -> Result<Vec<u8>, ParamsError> {
    fs::read(path).map_err(|source| ParamsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether [`parse`] insists on a content hash.
#[derive(Clone, Copy, PartialEq)]
enum Verify {
    /// A missing hash is [`ParamsError::Unverified`].
    Required,
    /// A missing hash is tolerated; a present one is checked.
    IfPresent,
}

/// Parses a safetensors buffer and checks its content hash.
fn parse<'a>(path: &Path, buf: &'a [u8], verify: Verify) -> Result<SafeTensors<'a>, ParamsError> {
    let corrupt = |reason: String| ParamsError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let (_, meta) = SafeTensors::read_metadata(buf).map_err(|e| corrupt(format!("{e:?}")))?;
    let st = SafeTensors::deserialize(buf).map_err(|e| corrupt(format!("{e:?}")))?;
    let stored = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CONTENT_HASH_KEY));
    let Some(stored) = stored else {
        return match verify {
            Verify::Required => Err(ParamsError::Unverified {
                path: path.to_path_buf(),
            }),
            Verify::IfPresent => Ok(st),
        };
    };
    let views = st.tensors();
    let computed = format_hash(content_hash(
        views
            .iter()
            .map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())),
    ));
    if *stored != computed {
        return Err(ParamsError::ContentMismatch {
            path: path.to_path_buf(),
            stored: stored.clone(),
            computed,
        });
    }
    Ok(st)
}
