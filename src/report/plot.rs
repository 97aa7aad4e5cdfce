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

fn series(lines: &[serde_json::Value], kind: &str, key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l["kind"] == kind)
        .filter_map(|l| Some((l["step"].as_f64()?, l[key].as_f64()?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

/// Draws `metrics` (a metrics.jsonl) into `out` (PNG).
pub fn loss_curve(metrics: &Path, out: &Path, title: &str) -> Result<()> {
    ensure_font()?;
    let lines = JsonlLog::read(metrics)?;
    let train = series(&lines, "train", "loss");
    let val = series(&lines, "val", "val_loss");
    if train.is_empty() {
        return Err(Error::Input(format!(
            "{}: no training steps logged yet",
            metrics.display()
        )));
    }
    let all = train.iter().chain(&val);
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.clone().map(|p| p.1).fold(f64::MIN, f64::max);
    let y_min = all.map(|p| p.1).fold(f64::MAX, f64::min).min(y_max - 1e-3);
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
            .x_desc("step")
            .y_desc("loss (nats)")
            .draw()?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), &BLUE))?
            .label("train (1/t-weighted)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
        if !val.is_empty() {
            chart
                .draw_series(val.iter().map(|&p| Circle::new(p, 4, RED.filled())))?
                .label("validation (nats/token)")
                .legend(|(x, y)| Circle::new((x + 10, y), 4, RED.filled()));
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
