//! Loss curves as PNG, from a run's metrics.jsonl: training loss per step and validation loss at
//! each evaluation. Text is drawn with DejaVu Sans (Debian's fonts-dejavu-core).

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};
use crate::report::jsonl::JsonlLog;

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the font once per process; plotters keeps a `'static` reference to it.
fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let bytes = FONT_PATHS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!("no DejaVu Sans font at {FONT_PATHS:?} (apt-get install fonts-dejavu-core)")
            })?;
        register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .map_err(|_| "the DejaVu Sans font could not be parsed".to_string())
    })
    .clone()
    .map_err(Error::Input)
}

/// The `(x, y)` points of the log lines of one kind.
fn series(lines: &[serde_json::Value], kind: &str, x: &str, y: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l["kind"] == kind)
        .filter_map(|l| Some((l[x].as_f64()?, l[y].as_f64()?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

/// One line or point set of a chart: its points, colour, legend and whether it is drawn as points.
struct Series {
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: String,
    dots: bool,
}

/// Draws `series` on shared axes into `out` (PNG).
fn chart(out: &Path, title: &str, x_desc: &str, series: &[Series]) -> Result<()> {
    ensure_font()?;
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.clone().map(|p| p.1).fold(f64::MIN, f64::max);
    let y_min = all.map(|p| p.1).fold(f64::MAX, f64::min).min(y_max - 1e-3);
    // A margin, so points at the extremes are not drawn on the axes.
    let pad = (y_max - y_min) * 0.04;
    let (y_min, y_max) = (y_min - pad, y_max + pad);
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(out, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, y_min..y_max)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("loss (nats)")
            .draw()?;
        for s in series {
            let color = s.color;
            if s.dots {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?
                    .label(&s.label)
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
            } else {
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), &color))?
                    .label(&s.label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::Input(format!("plotting {}: {e}", out.display())))
}

/// Draws `metrics` (a metrics.jsonl) into `out` (PNG): training loss per step and the
/// validation points.
pub fn loss_curve(metrics: &Path, out: &Path, title: &str) -> Result<()> {
    let lines = JsonlLog::read(metrics)?;
    let train = series(&lines, "train", "step", "loss");
    let val = series(&lines, "val", "step", "val_loss");
    if train.is_empty() {
        return Err(Error::Input(format!(
            "{}: no training steps logged yet",
            metrics.display()
        )));
    }
    let mut drawn = vec![Series {
        points: train,
        color: BLUE,
        label: "train (1/t-weighted)".into(),
        dots: false,
    }];
    if !val.is_empty() {
        drawn.push(Series {
            points: val,
            color: RED,
            label: "validation (nats/token)".into(),
            dots: true,
        });
    }
    chart(out, title, "step", &drawn)
}

/// Validation loss against training tokens for several runs on one chart, one line per
/// `(label, metrics.jsonl)`: how runs compare at equal data.
pub fn compare_validation(
    runs: &[(String, std::path::PathBuf)],
    out: &Path,
    title: &str,
) -> Result<()> {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(90, 90, 90),
    ];
    let mut drawn = Vec::new();
    for (i, (label, metrics)) in runs.iter().enumerate() {
        let points = series(&JsonlLog::read(metrics)?, "val", "tokens", "val_loss");
        if points.is_empty() {
            return Err(Error::Input(format!(
                "{}: no validation logged yet",
                metrics.display()
            )));
        }
        drawn.push(Series {
            points,
            color: COLORS[i % COLORS.len()],
            label: label.clone(),
            dots: false,
        });
    }
    chart(out, title, "training tokens", &drawn)
}
