//! Helpers shared by the examples: SVG line plots, a progress bar that hides
//! itself when stderr is not a terminal, peak-memory readings, JSON lines and
//! small statistics.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// One line of a plot: a legend label and its (x, y) points.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series from a label and points.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
        }
    }
}

/// What to draw: title, axis labels, log-scale y, and an optional horizontal
/// reference line (e.g. the FO plateau √(2D)).
#[derive(Clone, Debug)]
pub struct PlotSpec {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Logarithmic y axis (non-positive values are clamped to the smallest
    /// positive value in the data).
    pub log_y: bool,
    /// A dashed horizontal line at this y, with its label.
    pub reference: Option<(f64, String)>,
}

/// Errors when writing a figure.
#[derive(Debug)]
pub struct PlotError(pub String);

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plot: {}", self.0)
    }
}

impl std::error::Error for PlotError {}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Writes an SVG line plot of `series` to `path` (800×500 px) with plotters'
/// SVG backend; text is written as SVG `<text>`, so no system font is needed.
///
/// Series that share a label share a colour and appear once in the legend
/// (several seeds of one estimator). Non-finite points are skipped.
pub fn line_plot_svg(path: &Path, spec: &PlotSpec, series: &[Series]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError(format!("{}: {e}", path.display()));
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!spec.log_y || y > 0.0);
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(finite);
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if let Some((r, _)) = spec.reference {
        if r.is_finite() && (!spec.log_y || r > 0.0) {
            y0 = y0.min(r);
            y1 = y1.max(r);
        }
    }
    if !x0.is_finite() || !y0.is_finite() {
        return Err(PlotError(format!(
            "{}: no finite points to draw",
            path.display()
        )));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    // Headroom at the top for the legend (upper right).
    if spec.log_y {
        y0 /= 1.5;
        y1 *= 8.0;
    } else {
        let pad = ((y1 - y0) * 0.05).max(1e-12);
        y0 -= pad;
        y1 += 6.0 * pad;
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
    }
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;

    // Colours by label, in order of first appearance.
    let mut labels: Vec<&str> = Vec::new();
    for s in series {
        if !labels.contains(&s.name.as_str()) {
            labels.push(&s.name);
        }
    }
    let colour =
        |name: &str| PALETTE[labels.iter().position(|l| *l == name).unwrap_or(0) % PALETTE.len()];

    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(spec.x_label.as_str())
                .y_desc(spec.y_label.as_str())
                .x_label_formatter(&|v| tick(*v))
                .y_label_formatter(&|v| tick(*v))
                .max_light_lines(1)
                .draw()
                .map_err(|e| err(&e))?;
            let mut legend_done: Vec<&str> = Vec::new();
            for s in series {
                let c = colour(&s.name);
                let line =
                    LineSeries::new(s.points.iter().copied().filter(finite), c.stroke_width(2));
                let anno = chart.draw_series(line).map_err(|e| err(&e))?;
                if !legend_done.contains(&s.name.as_str()) {
                    legend_done.push(&s.name);
                    anno.label(s.name.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                }
            }
            if let Some((r, ref label)) = spec.reference {
                let dashes: Vec<f64> = (0..40).map(|i| x0 + (x1 - x0) * i as f64 / 40.0).collect();
                let mut first = true;
                for pair in dashes.chunks(2) {
                    if pair.len() < 2 {
                        break;
                    }
                    let seg =
                        LineSeries::new(vec![(pair[0], r), (pair[1], r)], BLACK.stroke_width(1));
                    let anno = chart.draw_series(seg).map_err(|e| err(&e))?;
                    if first {
                        first = false;
                        anno.label(label.clone())
                            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
                    }
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }

    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(spec.title.as_str(), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70);
    if spec.log_y {
        draw!(builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(|e| err(&e))?);
    } else {
        draw!(builder
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A short tick label: up to 3 significant decimals, trailing zeros dropped;
/// scientific notation outside [1e-3, 1e5).
fn tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else {
        let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// A progress bar on stderr that is hidden when stderr is not a terminal (CI,
/// pipes, tests) or when `quiet` is set (e.g. under `--json`).
pub fn progress(len: u64, label: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix:>14} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

/// Peak resident set size of this process in KiB (`VmHWM` in
/// `/proc/self/status`), or `None` where that file does not exist.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Mean and half-width of the normal-approximation 95% interval,
/// 1.96·s/√n with the sample standard deviation s (n − 1 denominator).
/// Returns (NaN, NaN) for an empty slice and a zero half-width for n = 1.
pub fn mean_ci95(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, 1.96 * (var / n as f64).sqrt())
}

/// Prints each value as one JSON line on stdout.
pub fn print_json_lines<T: serde::Serialize>(rows: &[T]) {
    for r in rows {
        match serde_json::to_string(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cannot serialise a result row: {e}"),
        }
    }
}

/// Checks that `path` looks like an SVG line plot: it parses as a sequence of
/// balanced XML-ish tags, has an `<svg` root and at least one `<polyline` or
/// `<path`. Returns what is wrong otherwise. Used by the tests.
pub fn check_svg(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !text.contains("<svg") {
        return Err(format!("{}: no <svg element", path.display()));
    }
    if !text.contains("<polyline") && !text.contains("<path") {
        return Err(format!("{}: no <polyline or <path element", path.display()));
    }
    // Balanced tags: every <name ...> is closed by </name> or is self-closing.
    let mut stack: Vec<String> = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let end = rest
            .find('>')
            .ok_or_else(|| format!("{}: unterminated tag", path.display()))?;
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim();
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("{}: </{name}> closes {other:?}", path.display())),
            }
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap_or("").to_string();
            stack.push(name);
        }
    }
    if !stack.is_empty() {
        return Err(format!("{}: unclosed tags {stack:?}", path.display()));
    }
    Ok(())
}

/// Formats a duration in seconds with a sensible unit.
pub fn fmt_secs(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// `path` with `suffix` before its extension: `("f.svg", "-steps")` → `f-steps.svg`
/// (a companion figure next to the main one).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("figure");
    match path.extension().and_then(|s| s.to_str()) {
        Some(ext) => path.with_file_name(format!("{stem}{suffix}.{ext}")),
        None => path.with_file_name(format!("{stem}{suffix}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_plot_is_well_formed() {
        let dir = std::env::temp_dir().join(format!("blo-examples-util-{}", std::process::id()));
        let path = dir.join("p.svg");
        let spec = PlotSpec {
            title: "t & <x>".into(),
            x_label: "k".into(),
            y_label: "|F'|".into(),
            log_y: true,
            reference: Some((0.3, "ref".into())),
        };
        let s = vec![
            Series::new("a", (1..50).map(|i| (i as f64, 1.0 / i as f64)).collect()),
            Series::new("a", (1..50).map(|i| (i as f64, 2.0 / i as f64)).collect()),
            Series::new("b", (1..50).map(|i| (i as f64, 0.5)).collect()),
        ];
        line_plot_svg(&path, &spec, &s).unwrap();
        check_svg(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("<text"), "labels are SVG text");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn check_svg_rejects_broken_files() {
        let dir = std::env::temp_dir().join(format!("blo-examples-util2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.svg");
        std::fs::write(&p, "<svg><g><path d='M0 0'/></svg>").unwrap();
        assert!(check_svg(&p).is_err());
        std::fs::write(&p, "<svg><g></g></svg>").unwrap();
        assert!(check_svg(&p).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn ci95_matches_hand_computation() {
        // xs = 1,2,3: mean 2, s² = (1+0+1)/2 = 1, half-width 1.96/√3.
        let (m, h) = mean_ci95(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((h - 1.96 / 3f64.sqrt()).abs() < 1e-15);
    }
}
