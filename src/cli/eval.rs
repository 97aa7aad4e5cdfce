//! `dlm eval MODEL_DIR --task TASK[,TASK...]`: the paper's benchmarks (reference-semantics §3) on
//! a DLM (diffusion scoring and sampling) or, with `--ar`, on an AR model (log-likelihood and
//! greedy decoding). Prints a table and writes the results JSON (schema in the README).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::args::{load_model_for_inference, load_tokenizer, RuntimeArgs};
use super::named::named;
use crate::eval::generation::GenSettings;
use crate::eval::harness::{run_task, EvalModel, EvalSettings};
use crate::eval::multiple_choice::{Estimator, PromptFormat};
use crate::eval::readers::read_records;
use crate::eval::results::table;
use crate::eval::tasks::{default_assets_dir, default_data_dir, find_task};
use crate::model::Architecture;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum McEstimator {
    /// §3.1: T-point grid over t, one random mask per t, unweighted mean CE over the answer.
    Reference,
    /// t ~ U(0, 1), 1/t-weighted CE, averaged over --mc-samples draws (Dream); on a LLaDA model,
    /// LLaDA's `get_log_likelihood` (stratified mask counts, no shift; --mc-samples is mc_num).
    Elbo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArReduction {
    /// Mean log-probability per answer token (the reference's eval-llm.py).
    Mean,
    /// Summed log-probability (lm-eval's `acc`).
    Sum,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// HF-layout model directory (with tokenizer.json).
    pub model: PathBuf,
    /// Comma-separated tasks: hellaswag, piqa, winogrande, siqa, lambada, triviaqa, gsm8k,
    /// sat-math, rocstories, code-infill.
    #[arg(long, value_delimiter = ',', required = true)]
    pub task: Vec<String>,
    /// Evaluate as an AR model: causal log-likelihood for multiple choice, greedy decoding.
    #[arg(long)]
    pub ar: bool,
    /// At most this many examples per task (the first ones); default: all, or the paper's
    /// first 2000 (triviaqa) / 1000 (rocstories).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the results JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// DLM multiple-choice estimator.
    #[arg(long, value_enum, default_value = "reference")]
    pub mc_estimator: McEstimator,
    /// T of the reference estimator (the paper's default 32).
    #[arg(long, default_value_t = 32)]
    pub mc_steps: usize,
    /// Draws per choice of the ELBO estimator.
    #[arg(long, default_value_t = 32)]
    pub mc_samples: usize,
    /// Classifier-free guidance of LLaDA's likelihood estimator (`get_log_likelihood`'s `cfg`:
    /// the prompt masked in a second, unconditional pass); 0 = none. LLaDA models only.
    #[arg(long, default_value_t = 0.0)]
    pub cfg_scale: f32,
    /// AR multiple-choice score: mean or sum of the answer's log-probabilities (acc_norm always
    /// uses the sum per character).
    #[arg(long, value_enum, default_value = "mean")]
    pub ar_score: ArReduction,
    /// Prompt format of the multiple-choice tasks.
    #[arg(long, value_parser = named::<PromptFormat>(), default_value = "reference")]
    pub format: PromptFormat,
    /// T for rocstories and code-infill (default 32) and gsm8k (default 64).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DLM sampling temperature where the reference samples (default 0.95; lambada 1.0).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// The asset cache with `benchmarks/` (default $DLM_ASSETS or ~/.cache/dlm-assets).
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// The repository's shipped evaluation data (default: data/eval in the source tree).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Read the (single) task's examples from this file, in the task's own format, instead of
    /// its default file: e.g. held-out passages as a lambada-style plain-text file.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Mask token id, overriding the model config's `mask_token_id` (DLM mode).
    #[arg(long)]
    pub mask_id: Option<u32>,
    /// Hide the progress bars.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    // Resolve every task and its file before loading the model: bad input fails fast.
    let assets = a.assets.clone().unwrap_or_else(default_assets_dir);
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    if a.data.is_some() && a.task.len() != 1 {
        anyhow::bail!("--data replaces one task's file: name exactly one --task with it");
    }
    let tasks = a
        .task
        .iter()
        .map(|name| {
            let spec = find_task(name)?;
            let path = match &a.data {
                Some(file) if file.is_file() => file.clone(),
                Some(file) => {
                    return Err(crate::Error::Input(format!(
                        "--data {}: no such file",
                        file.display()
                    )))
                }
                None => spec.data_file(&assets, &data_dir)?,
            };
            Ok((spec, path))
        })
        .collect::<crate::Result<Vec<_>>>()?;
    if a.mc_steps == 0 || a.mc_samples == 0 {
        anyhow::bail!("--mc-steps and --mc-samples must be at least 1");
    }
    if !(a.cfg_scale >= 0.0 && a.cfg_scale.is_finite()) {
        anyhow::bail!(
            "--cfg-scale must be a finite number >= 0, got {}",
            a.cfg_scale
        );
    }

    let loaded = load_model_for_inference(&a.model, &a.runtime)?;
    let device = a.runtime.device.open()?;
    let tokenizer = load_tokenizer(&a.model)?;
    // GSM8K prompts use the SFT layout [BOS] question [SEP] (§1.7, §3.6).
    let sft = if tasks.iter().any(|(s, _)| s.name == "gsm8k") {
        Some(crate::train::sources::sft_format(
            &loaded.config,
            None,
            256,
        )?)
    } else {
        None
    };
    let estimator = match (a.ar, a.mc_estimator) {
        (true, _) => Estimator::Ar {
            mean: a.ar_score == ArReduction::Mean,
        },
        (false, McEstimator::Reference) => Estimator::Reference { steps: a.mc_steps },
        // LLaDA's own estimator for LLaDA (its `get_log_likelihood`, batches of 16 where the
        // draws divide into them, as its default mc_num 128 does).
        (false, McEstimator::Elbo) if loaded.config.arch == Architecture::Llada => {
            Estimator::LladaElbo {
                mc_num: a.mc_samples,
                batch: if a.mc_samples.is_multiple_of(16) {
                    16
                } else {
                    a.mc_samples
                },
                cfg: a.cfg_scale,
            }
        }
        (false, McEstimator::Elbo) => Estimator::Elbo {
            samples: a.mc_samples,
        },
    };
    if a.cfg_scale > 0.0 && !matches!(estimator, Estimator::LladaElbo { .. }) {
        anyhow::bail!(
            "--cfg-scale guides LLaDA's likelihood estimator only (a LLaDA model with \
             --mc-estimator elbo)"
        );
    }
    let settings = EvalSettings {
        ar: a.ar,
        estimator,
        format: a.format,
        gen: GenSettings {
            steps: a.steps,
            temperature: a.temperature,
            sft,
            max_len: loaded.config.max_position_embeddings,
        },
        limit: a.limit,
        seed: a.seed,
        show_progress: !a.no_progress,
    };
    let stop_ids: Vec<u32> = [loaded.config.eos_token_id, sft.map(|f| f.pad)]
        .into_iter()
        .flatten()
        .collect();
    let m = EvalModel {
        model: loaded.model.as_ref(),
        tokenizer: &tokenizer,
        mask_id: a.mask_id.or(loaded.config.mask_token_id),
        stop_ids,
        device: &device,
    };
    let model_label = a.model.display().to_string();
    let mut results = Vec::new();
    for (spec, path) in &tasks {
        let records = read_records(path)?;
        let r = run_task(
            &m,
            spec,
            &records,
            &settings,
            (&model_label, &path.display().to_string()),
        )
        .with_context(|| format!("task {}", spec.name))?;
        if r.skipped > 0 {
            eprintln!(
                "{}: skipped {} records (malformed, or longer than the model's context)",
                spec.name, r.skipped
            );
        }
        results.push(r);
        // Rewrite the JSON after every task so a long run keeps what it has finished.
        if let Some(out) = &a.out {
            write_results(out, &results)?;
        }
    }
    print!("{}", table(&results));
    if let Some(out) = &a.out {
        eprintln!("results written to {}", out.display());
    }
    Ok(())
}

fn write_results(
    out: &std::path::Path,
    results: &[crate::eval::results::TaskResult],
) -> anyhow::Result<()> {
    let json = serde_json::json!({ "results": results });
    crate::atomic::write_atomic(out, serde_json::to_string_pretty(&json)?.as_bytes())
        .with_context(|| format!("writing {}", out.display()))
}
