//! `dlm plot RUN_DIR`: the loss curve of a run (also written at the end of every run).
//! `dlm plot RUN_A RUN_B ...`: validation loss against training tokens, one line per run.

use std::path::PathBuf;

use clap::Args;

use crate::report::plot::{compare_validation, loss_curve};

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directories (with metrics.jsonl); several are drawn on one validation chart.
    #[arg(required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Output PNG (default: RUN/loss.png for one run; required for several).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Chart title (default: the run directory, or "validation loss").
    #[arg(long)]
    pub title: Option<String>,
}

pub fn run(a: PlotArgs) -> anyhow::Result<()> {
    let out = match (&a.out, a.runs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [one]) => one.join("loss.png"),
        (None, _) => anyhow::bail!("several runs: name the chart with --out FILE.png"),
    };
    if let [one] = a.runs.as_slice() {
        let title = a.title.unwrap_or_else(|| one.display().to_string());
        loss_curve(&one.join("metrics.jsonl"), &out, &title)?;
    } else {
        let runs: Vec<(String, PathBuf)> = a
            .runs
            .iter()
            .map(|r| {
                let name = r.file_name().unwrap_or(r.as_os_str());
                (name.to_string_lossy().into_owned(), r.join("metrics.jsonl"))
            })
            .collect();
        let title = a.title.unwrap_or_else(|| "validation loss".into());
        compare_validation(&runs, &out, &title)?;
    }
    println!("wrote {}", out.display());
    Ok(())
}
