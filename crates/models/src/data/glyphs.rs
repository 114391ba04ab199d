//! A procedural glyph data set: every class is a few random pen strokes, every
//! sample a jittered rendering of them. Generated in code, so demos and tests
//! run with no download. Omniglot-like: `[1, size, size]`, strokes 1 on 0.
//!
//! Class `c`'s strokes are drawn from a ChaCha8 stream seeded with `seed` on
//! stream `c`, so a class looks the same whatever the number of classes; each
//! sample then draws its jitter (stroke control points moved, a small rotation,
//! scale and shift) from the same stream.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::ImageSet;

/// Options of [`glyphs`].
#[derive(Clone, Debug, PartialEq)]
pub struct GlyphOptions {
    /// Number of classes (default 20).
    pub n_classes: usize,
    /// Samples per class (default 20, like Omniglot).
    pub per_class: usize,
    /// Side length in pixels (default 28).
    pub size: usize,
    /// Strokes per class, inclusive range (default 2..=4).
    pub strokes: (usize, usize),
    /// Jitter strength: control points move by up to `jitter`, the glyph is
    /// shifted by up to `jitter`, scaled by 1 ± `jitter` and rotated by up to
    /// `2·jitter` radians (default 0.05, in units of the image side).
    pub jitter: f64,
    /// Stroke half-width in units of the image side (default 0.04).
    pub thickness: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for GlyphOptions {
    fn default() -> Self {
        GlyphOptions {
            n_classes: 20,
            per_class: 20,
            size: 28,
            strokes: (2, 4),
            jitter: 0.05,
            thickness: 0.04,
            seed: 0,
        }
    }
}

type Pt = [f64; 2];

/// Generates the set (source path `<glyphs>`).
///
/// ```
/// use models::{glyphs, GlyphOptions};
/// let set = glyphs(&GlyphOptions { n_classes: 3, per_class: 2, ..GlyphOptions::default() });
/// assert_eq!((set.num_classes(), set.num_images()), (3, 6));
/// let img = set.image::<f32>(0, 0);
/// assert!(img.iter().any(|&v| v > 0.5)); // some ink
/// ```
pub fn glyphs(opts: &GlyphOptions) -> ImageSet {
    let s = opts.size;
    let mut set = ImageSet::new("<glyphs>", 1, s, s);
    for c in 0..opts.n_classes {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        rng.set_stream(c as u64);
        let n_strokes = rng.gen_range(opts.strokes.0..=opts.strokes.1.max(opts.strokes.0));
        // Each stroke: a quadratic Bézier curve with three control points.
        let strokes: Vec<[Pt; 3]> = (0..n_strokes)
            .map(|_| {
                let mut p = || [rng.gen_range(0.2..0.8), rng.gen_range(0.2..0.8)];
                [p(), p(), p()]
            })
            .collect();
        let mut images = Vec::with_capacity(opts.per_class);
        for _ in 0..opts.per_class {
            let j = opts.jitter;
            let angle = rng.gen_range(-2.0 * j..=2.0 * j);
            let scale = 1.0 + rng.gen_range(-j..=j);
            let shift = [rng.gen_range(-j..=j), rng.gen_range(-j..=j)];
            let (sin, cos) = angle.sin_cos();
            let mut segs: Vec<(Pt, Pt)> = Vec::new();
            for st in &strokes {
                let mut cp = *st;
                for p in &mut cp {
                    p[0] += rng.gen_range(-j..=j);
                    p[1] += rng.gen_range(-j..=j);
                    // Rotate and scale about the centre, then shift.
                    let (x, y) = (p[0] - 0.5, p[1] - 0.5);
                    *p = [
                        0.5 + scale * (cos * x - sin * y) + shift[0],
                        0.5 + scale * (sin * x + cos * y) + shift[1],
                    ];
                }
                let steps = 12;
                let at = |t: f64| -> Pt {
                    let u = 1.0 - t;
                    [
                        u * u * cp[0][0] + 2.0 * u * t * cp[1][0] + t * t * cp[2][0],
                        u * u * cp[0][1] + 2.0 * u * t * cp[1][1] + t * t * cp[2][1],
                    ]
                };
                for k in 0..steps {
                    segs.push((
                        at(k as f64 / steps as f64),
                        at((k + 1) as f64 / steps as f64),
                    ));
                }
            }
            images.push(render(&segs, s, opts.thickness));
        }
        set.add_class(format!("glyph{c:03}"), "<glyphs>", images);
    }
    set
}

/// Anti-aliased rendering: ink = clamp(1 − (d − t)/aa, 0, 1) with d the distance
/// from the pixel centre to the nearest segment, t the half-width and aa one pixel.
fn render(segs: &[(Pt, Pt)], s: usize, thickness: f64) -> Vec<u8> {
    let aa = 1.0 / s as f64;
    let mut out = vec![0u8; s * s];
    for y in 0..s {
        for x in 0..s {
            let p = [(x as f64 + 0.5) / s as f64, (y as f64 + 0.5) / s as f64];
            let d = segs
                .iter()
                .map(|&(a, b)| seg_dist(p, a, b))
                .fold(f64::INFINITY, f64::min);
            let ink = (1.0 - (d - thickness) / aa).clamp(0.0, 1.0);
            out[y * s + x] = (ink * 255.0).round() as u8;
        }
    }
    out
}

fn seg_dist(p: Pt, a: Pt, b: Pt) -> f64 {
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a[0] + t * dx - p[0], a[1] + t * dy - p[1]);
    (qx * qx + qy * qy).sqrt()
}
