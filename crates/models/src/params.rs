//! Named parameter lists: specification, seeded initialisation, counting, and
//! safetensors files.
//!
//! A model is a pure function of its parameters; [`Params`] is the flat,
//! ordered list of named tensors it is evaluated at. The order of
//! [`Params::tensors`] is the order of the `params` slice every
//! `forward` takes, and names follow PyTorch's `state_dict` style
//! (`layers.0.weight`), so saved files open in PyTorch or JAX under the same keys.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use safetensors::{Dtype, SafeTensors};
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
    /// atomically: a temporary file in the same folder, then a rename, so a
    /// crash never leaves a half-written file under `path`.
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
        let buf = safetensors::serialize(views, &None).map_err(|e| ParamsError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_atomic(path, &buf)
    }

    /// Reads a safetensors file with exactly the names, shapes and dtype of
    /// `self` (typically a freshly initialised model), returning the file's
    /// values in `self`'s order. Extra tensors in the file are ignored.
    ///
    /// # Errors
    /// [`ParamsError::Io`] / [`ParamsError::Corrupt`] naming the path;
    /// [`ParamsError::MissingTensor`], [`ParamsError::WrongShape`],
    /// [`ParamsError::WrongDtype`] naming the tensor.
    pub fn load_like(&self, path: impl AsRef<Path>) -> Result<Self, ParamsError> {
        let path = path.as_ref();
        let buf = read_file(path)?;
        let st = parse(path, &buf)?;
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

    /// Reads every tensor of a safetensors file (dtype must be `F`), in name order.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ParamsError> {
        let path = path.as_ref();
        let buf = read_file(path)?;
        let st = parse(path, &buf)?;
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        let mut out = Params::new();
        for name in names {
            let view = st.tensor(&name).map_err(|e| ParamsError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            let t = from_view::<F>(path, &name, &view)?;
            out.push(name, t);
        }
        Ok(out)
    }
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

fn parse<'a>(path: &Path, buf: &'a [u8]) -> Result<SafeTensors<'a>, ParamsError> {
    SafeTensors::deserialize(buf).map_err(|e| ParamsError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("{e:?}"),
    })
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a
/// rename (atomic on POSIX file systems).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ParamsError> {
    let io = |source| ParamsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}
