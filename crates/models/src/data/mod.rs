//! Labelled image sets and the N-way K-shot episode sampler.
//!
//! An [`ImageSet`] stores images as bytes (`u8`, channel-major `[c, h, w]`,
//! value/255 on the way out) grouped by class; a class may be a rotated view
//! of another class's images (Omniglot's 90°/180°/270° augmentation), which
//! costs no memory. [`EpisodeSampler`] draws few-shot episodes from it.

use std::path::{Path, PathBuf};

use rand::seq::index::sample as sample_indices;
use rand::Rng;
use tape::{Float, Tensor};

use crate::error::DataError;

pub mod glyphs;
pub mod image;
pub mod mini_imagenet;
pub mod omniglot;
pub mod split;

/// One class of an [`ImageSet`].
#[derive(Clone, Debug, PartialEq)]
pub struct ClassInfo {
    /// Human-readable name (e.g. `Greek/character01/rot90`).
    pub name: String,
    /// Where the class's images came from.
    pub path: PathBuf,
    /// Indices of the stored images.
    pub images: Vec<usize>,
    /// Quarter turns (counter-clockwise) applied when an image is read: 0..=3.
    pub rotation: u8,
}

/// A labelled image set: classes of same-sized images.
///
/// ```
/// use models::ImageSet;
/// let mut set = ImageSet::new("memory", 1, 2, 2);
/// set.add_class("a", "memory/a", vec![vec![0, 255, 0, 0], vec![255, 255, 0, 0]]);
/// set.add_rotations();
/// assert_eq!(set.num_classes(), 4);
/// // A quarter turn counter-clockwise moves the top-right pixel to the top-left.
/// assert_eq!(set.image::<f64>(1, 0), vec![1.0, 0.0, 0.0, 0.0]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    source: PathBuf,
    channels: usize,
    height: usize,
    width: usize,
    pixels: Vec<u8>,
    classes: Vec<ClassInfo>,
}

impl ImageSet {
    /// An empty set of `[channels, height, width]` images; `source` is reported in errors.
    pub fn new(source: impl Into<PathBuf>, channels: usize, height: usize, width: usize) -> Self {
        ImageSet {
            source: source.into(),
            channels,
            height,
            width,
            pixels: Vec::new(),
            classes: Vec::new(),
        }
    }

    /// Adds a class of images (each `channels·height·width` bytes, channel-major)
    /// and returns its id.
    ///
    /// # Panics
    /// If an image has the wrong number of bytes.
    #[track_caller]
    pub fn add_class(
        &mut self,
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        images: Vec<Vec<u8>>,
    ) -> usize {
        let n = self.image_len();
        let mut ids = Vec::with_capacity(images.len());
        for (k, img) in images.into_iter().enumerate() {
            assert_eq!(
                img.len(),
                n,
                "ImageSet::add_class: image {k} has {} bytes, expected {n}",
                img.len()
            );
            ids.push(self.pixels.len() / n.max(1));
            self.pixels.extend_from_slice(&img);
        }
        self.classes.push(ClassInfo {
            name: name.into(),
            path: path.into(),
            images: ids,
            rotation: 0,
        });
        self.classes.len() - 1
    }

    /// Adds, for every current class, three classes holding its images rotated by
    /// 90°, 180° and 270° (counter-clockwise). Class `i` of `m` gets rotated copies at
    /// `m + 3i`, `m + 3i + 1`, `m + 3i + 2`.
    ///
    /// # Panics
    /// If the images are not square.
    #[track_caller]
    pub fn add_rotations(&mut self) {
        assert_eq!(
            self.height, self.width,
            "ImageSet::add_rotations: images are {}×{}, rotations need square images",
            self.height, self.width
        );
        let base: Vec<ClassInfo> = self
            .classes
            .iter()
            .filter(|c| c.rotation == 0)
            .cloned()
            .collect();
        for c in base {
            for r in 1..4u8 {
                self.classes.push(ClassInfo {
                    name: format!("{}/rot{}", c.name, 90 * r as usize),
                    path: c.path.clone(),
                    images: c.images.clone(),
                    rotation: r,
                });
            }
        }
    }

    /// A new set holding the classes `ids` of this one, in that order (their
    /// images copied once even when rotated views share them; rotations kept).
    ///
    /// # Panics
    /// If an id is not a class of this set.
    #[track_caller]
    pub fn select_classes(&self, ids: &[usize]) -> ImageSet {
        let n = self.image_len();
        let mut out = ImageSet::new(self.source.clone(), self.channels, self.height, self.width);
        // Old image index → new one, so views of one image keep sharing it.
        let mut moved: Vec<Option<usize>> = vec![None; self.pixels.len() / n.max(1)];
        for &c in ids {
            assert!(
                c < self.classes.len(),
                "ImageSet::select_classes: class {c} of {}",
                self.classes.len()
            );
            let class = &self.classes[c];
            let images = class
                .images
                .iter()
                .map(|&i| {
                    *moved[i].get_or_insert_with(|| {
                        out.pixels
                            .extend_from_slice(&self.pixels[i * n..(i + 1) * n]);
                        out.pixels.len() / n.max(1) - 1
                    })
                })
                .collect();
            out.classes.push(ClassInfo {
                images,
                ..class.clone()
            });
        }
        out
    }

    /// Appends every class of `other` (same image shape) after this set's
    /// classes, keeping their names, paths and rotations.
    ///
    /// # Panics
    /// If the image shapes differ.
    #[track_caller]
    pub fn append(&mut self, other: &ImageSet) {
        assert_eq!(
            self.image_shape(),
            other.image_shape(),
            "ImageSet::append: images {:?} and {:?}",
            self.image_shape(),
            other.image_shape()
        );
        let offset = self.pixels.len() / self.image_len().max(1);
        self.pixels.extend_from_slice(&other.pixels);
        for c in &other.classes {
            self.classes.push(ClassInfo {
                images: c.images.iter().map(|i| i + offset).collect(),
                ..c.clone()
            });
        }
    }

    /// Where the set came from.
    pub fn source(&self) -> &Path {
        &self.source
    }
    /// `[channels, height, width]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
    /// Scalars per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    /// Number of classes (rotations included).
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
    /// Class metadata.
    pub fn class(&self, c: usize) -> &ClassInfo {
        &self.classes[c]
    }
    /// All classes.
    pub fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }
    /// Number of images over all classes (rotated views counted).
    pub fn num_images(&self) -> usize {
        self.classes.iter().map(|c| c.images.len()).sum()
    }

    /// Example `k` of class `c` as `[c, h, w]` values in [0, 1] (byte/255).
    pub fn image<F: Float>(&self, c: usize, k: usize) -> Vec<F> {
        let mut out = vec![F::zero(); self.image_len()];
        self.write_image(c, k, &mut out);
        out
    }

    /// Writes example `k` of class `c` into `out` (`image_len()` values).
    ///
    /// # Panics
    /// If the class or example does not exist or `out` has the wrong length.
    #[track_caller]
    pub fn write_image<F: Float>(&self, c: usize, k: usize, out: &mut [F]) {
        assert!(
            c < self.classes.len(),
            "ImageSet::image: class {c} of {}",
            self.classes.len()
        );
        let class = &self.classes[c];
        assert!(
            k < class.images.len(),
            "ImageSet::image: example {k} of {} in class `{}`",
            class.images.len(),
            class.name
        );
        let n = self.image_len();
        assert_eq!(
            out.len(),
            n,
            "ImageSet::write_image: buffer of {} for images of {n}",
            out.len()
        );
        let src = &self.pixels[class.images[k] * n..(class.images[k] + 1) * n];
        let (h, w) = (self.height, self.width);
        for ch in 0..self.channels {
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                for x in 0..w {
                    // Counter-clockwise quarter turns (as numpy.rot90).
                    let (sy, sx) = match class.rotation {
                        0 => (y, x),
                        1 => (x, w - 1 - y),
                        2 => (h - 1 - y, w - 1 - x),
                        _ => (h - 1 - x, y),
                    };
                    out[ch * h * w + y * w + x] = F::from_f64(plane[sy * w + sx] as f64 / 255.0);
                }
            }
        }
    }
}

/// A few-shot episode: `N·K` support and `N·Q` query images with episode labels
/// `0..N` (label `j` is set class `classes[j]`). Support and query are grouped
/// by label: entries `j·K .. (j+1)·K` of the support have label `j`.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode<F> {
    /// Support images `[N·K, c, h, w]`.
    pub support_x: Tensor<F>,
    /// Support labels (length `N·K`).
    pub support_y: Vec<usize>,
    /// Query images `[N·Q, c, h, w]`.
    pub query_x: Tensor<F>,
    /// Query labels (length `N·Q`).
    pub query_y: Vec<usize>,
    /// The set's class id for each episode label.
    pub classes: Vec<usize>,
    /// `(class, example)` of each support image.
    pub support_ids: Vec<(usize, usize)>,
    /// `(class, example)` of each query image.
    pub query_ids: Vec<(usize, usize)>,
}

/// Draws N-way K-shot episodes with Q query images per class.
///
/// Each episode picks N distinct classes uniformly at random, then for each
/// class K + Q distinct examples uniformly at random: the first K are support,
/// the rest query, so support and query never share an example.
///
/// ```
/// use models::{glyphs, EpisodeSampler, GlyphOptions};
/// use rand::SeedableRng;
/// let set = glyphs(&GlyphOptions { n_classes: 8, per_class: 6, ..GlyphOptions::default() });
/// let sampler = EpisodeSampler::new(&set, 5, 1, 3).unwrap();
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let ep = sampler.sample::<f32, _>(&set, &mut rng);
/// assert_eq!(ep.support_x.dims(), &[5, 1, 28, 28]);
/// assert_eq!(ep.query_y.len(), 15);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpisodeSampler {
    /// Classes per episode (N).
    pub n_way: usize,
    /// Support examples per class (K).
    pub k_shot: usize,
    /// Query examples per class (Q).
    pub q_query: usize,
}

impl EpisodeSampler {
    /// A sampler for `set`, checking that it can serve episodes.
    ///
    /// # Errors
    /// [`DataError::EmptySplit`] if the set has no classes,
    /// [`DataError::TooFewClasses`] if it has fewer than N,
    /// [`DataError::TooFewExamples`] naming the first class with fewer than K + Q examples.
    pub fn new(
        set: &ImageSet,
        n_way: usize,
        k_shot: usize,
        q_query: usize,
    ) -> Result<Self, DataError> {
        if set.num_classes() == 0 {
            return Err(DataError::EmptySplit {
                path: set.source.clone(),
                split: "episodes".into(),
                reason: "the image set has no classes".into(),
            });
        }
        if set.num_classes() < n_way {
            return Err(DataError::TooFewClasses {
                path: set.source.clone(),
                have: set.num_classes(),
                need: n_way,
            });
        }
        let need = k_shot + q_query;
        if let Some(c) = set.classes.iter().find(|c| c.images.len() < need) {
            return Err(DataError::TooFewExamples {
                class: c.name.clone(),
                path: c.path.clone(),
                have: c.images.len(),
                need,
            });
        }
        Ok(EpisodeSampler {
            n_way,
            k_shot,
            q_query,
        })
    }

    /// Draws one episode. Same RNG state → same episode.
    ///
    /// # Panics
    /// If `set` is not one the sampler was validated on (too few classes or examples).
    #[track_caller]
    pub fn sample<F: Float, R: Rng>(&self, set: &ImageSet, rng: &mut R) -> Episode<F> {
        let (n, k, q) = (self.n_way, self.k_shot, self.q_query);
        assert!(
            set.num_classes() >= n,
            "EpisodeSampler::sample: {} classes for {n}-way episodes",
            set.num_classes()
        );
        let classes: Vec<usize> = sample_indices(rng, set.num_classes(), n).into_vec();
        let len = set.image_len();
        let [c, h, w] = set.image_shape();
        let mut sx = vec![F::zero(); n * k * len];
        let mut qx = vec![F::zero(); n * q * len];
        let (mut sy, mut qy, mut sid, mut qid) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (label, &cls) in classes.iter().enumerate() {
            let have = set.classes[cls].images.len();
            assert!(
                have >= k + q,
                "EpisodeSampler::sample: class `{}` has {have} examples, need {}",
                set.classes[cls].name,
                k + q
            );
            let picks = sample_indices(rng, have, k + q).into_vec();
            for (m, &ex) in picks.iter().enumerate() {
                if m < k {
                    let at = (label * k + m) * len;
                    set.write_image(cls, ex, &mut sx[at..at + len]);
                    sy.push(label);
                    sid.push((cls, ex));
                } else {
                    let at = (label * q + m - k) * len;
                    set.write_image(cls, ex, &mut qx[at..at + len]);
                    qy.push(label);
                    qid.push((cls, ex));
                }
            }
        }
        Episode {
            support_x: Tensor::new([n * k, c, h, w], sx),
            support_y: sy,
            query_x: Tensor::new([n * q, c, h, w], qx),
            query_y: qy,
            classes,
            support_ids: sid,
            query_ids: qid,
        }
    }
}
