//! `dlm plot RUN_DIR`: the loss curve of a run (also written at the end of every run).

use std::path::PathBuf;

use clap::Args;

use crate::report::plot::loss_curve;

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A run directory (with metrics.jsonl).
    pub run: PathBuf,
    /// Output PNG (default: RUN/loss.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: PlotArgs) -> anyhow::Result<()> {
    let out = a.out.unwrap_or_else(|| a.run.join("loss.png"));
    loss_curve(
        &a.run.join("metrics.jsonl"),
        &out,
        &a.run.display().to_string(),
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
