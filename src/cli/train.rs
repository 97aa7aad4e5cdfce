//! `dlm adapt`, `dlm pretrain`, `dlm sft`: the options they share, turned into the library's
//! run config and options, and the opening they share: resume a run, or start one in `train::run`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use clap::Args;

use super::named::named;
use crate::data::corpus::CorpusOptions;
use crate::data::loader::ExampleSource;
use crate::data::packing::PackedSource;
use crate::data::tokenizer::Tokenizer;
use crate::dist::launcher_world_size;
use crate::model::runtime::DeviceSpec;
use crate::model::ModelConfig;
use crate::train::adamw::AdamWConfig;
use crate::train::objective::Objective;
use crate::train::params::Precision;
use crate::train::run::{NewRun, ResumeChanges, Run, RunOptions};
use crate::train::run_dir::RunFiles;
use crate::train::schedule::{Decay, Schedule};
use crate::train::sources::{packed_sources, Sources};
use crate::train::trainer::RunConfig;

/// Sequences per micro-batch and rank when `--micro-batch` is not given.
const DEFAULT_MICRO_BATCH: usize = 8;

/// Options every training command shares.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Run directory: checkpoints, metrics.jsonl, run_config.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Corpus files or directories.
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Continue the run in this directory exactly where its last checkpoint stopped.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Sequence length (tokens per example).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Sequences per micro-batch on each rank (default 8). On resume it replaces the run's, e.g.
    /// to keep the global batch (world size × micro-batch) under another world size.
    #[arg(long)]
    pub micro_batch: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// The decay after warmup.
    #[arg(long, value_parser = named::<Decay>(), default_value_t = Decay::Cosine)]
    pub schedule: Decay,
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Final learning rate as a fraction of the peak (cosine and linear).
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// Global-norm gradient clipping; 0 disables.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optimizer steps to run (on resume: the new total).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Alternatively, a token budget: steps = tokens / (micro-batch · accumulation · seq-len).
    #[arg(long)]
    pub max_tokens: Option<u64>,
    #[arg(long, default_value_t = 100)]
    pub val_every: u64,
    #[arg(long, default_value_t = 4)]
    pub val_batches: usize,
    /// Fraction of documents held out for validation.
    #[arg(long, default_value_t = 0.01)]
    pub val_fraction: f64,
    /// Validate on these files instead (all of `--data` is then trained on): e.g. held-out
    /// text shared by several runs that are to be compared.
    #[arg(long, num_args = 1..)]
    pub val_data: Vec<PathBuf>,
    #[arg(long, default_value_t = 500)]
    pub save_every: u64,
    #[arg(long, default_value_t = 3)]
    pub keep_last: usize,
    /// Skip steps whose loss or gradient is not finite (counted) instead of stopping.
    #[arg(long)]
    pub skip_nonfinite: bool,
    /// Plain-text files hold one document per non-blank line.
    #[arg(long)]
    pub line_docs: bool,
    /// Examples per shuffle window.
    #[arg(long, default_value_t = 1024)]
    pub shuffle_buffer: usize,
    #[arg(long)]
    pub no_progress: bool,
    /// Forward and backward dtype: f32 (default) or bf16. Parameters, AdamW moments and
    /// checkpoints stay f32 either way. On resume it replaces the run's.
    #[arg(long)]
    pub dtype: Option<Precision>,
    /// Dropout probability while training, on the residual stream: the embeddings' output and
    /// each block's attention and MLP outputs (GPT-2's embd_pdrop and resid_pdrop sites; GPT-2
    /// and LLaMA-family models). 0 (default): none, as the reference trains. Kept on resume.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// cpu, or cuda / cuda:N in a build with the `cuda` feature. With several ranks, `cuda`
    /// means the GPU of the rank's index on its node.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Data-parallel ranks (processes). Outside an MPI launcher dlm relaunches itself under
    /// `mpirun -np N`; under one, the launcher's size is used. Needs the `mpi` feature.
    #[arg(long)]
    pub world_size: Option<usize>,
    /// ZeRO stage: 0 (every rank keeps all AdamW moments) or 1 (each keeps 1/N of them).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: u8,
}

impl TrainArgs {
    pub fn run_config(
        &self,
        command: &str,
        objective: Objective,
        base: Option<PathBuf>,
    ) -> anyhow::Result<RunConfig> {
        let world = self.world_size.or_else(launcher_world_size).unwrap_or(1);
        let micro_batch = self.micro_batch.unwrap_or(DEFAULT_MICRO_BATCH);
        let tokens_per_step = (world * micro_batch * self.grad_accum * self.seq_len) as u64;
        let max_steps = match (self.max_steps, self.max_tokens) {
            (Some(s), _) => s,
            (None, Some(t)) => t.div_ceil(tokens_per_step.max(1)),
            (None, None) => bail!("pass --max-steps or --max-tokens"),
        };
        if micro_batch == 0 || self.grad_accum == 0 || self.seq_len < 2 {
            bail!("micro-batch and accumulation must be ≥ 1 and seq-len ≥ 2");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("--dropout {} is not a probability in [0, 1)", self.dropout);
        }
        Ok(RunConfig {
            command: command.into(),
            objective,
            seq_len: self.seq_len,
            micro_batch,
            grad_accum: self.grad_accum,
            optimizer: AdamWConfig {
                lr: self.lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
            },
            schedule: Schedule {
                peak_lr: self.lr,
                warmup_steps: self.warmup,
                total_steps: max_steps,
                decay: self.schedule,
                min_lr_ratio: self.min_lr_ratio,
            },
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            seed: self.seed,
            max_steps,
            val_every: self.val_every,
            val_batches: self.val_batches,
            save_every: self.save_every,
            keep_last: self.keep_last,
            skip_nonfinite: self.skip_nonfinite,
            data: self.data.clone(),
            val_data: self.val_data.clone(),
            base,
            lora: None,
            dtype: self.dtype.unwrap_or_default(),
            dropout: self.dropout,
        })
    }

    fn run_options(&self) -> RunOptions {
        RunOptions {
            device: self.device,
            world_size: self.world_size,
            zero1: self.zero == 1,
            shuffle_buffer: self.shuffle_buffer,
            show_progress: !self.no_progress,
        }
    }

    /// Packed blocks of `--data` (`--line-docs` read), validated on `--val-data` or a
    /// `--val-fraction` of it: the sources of `adapt` and `pretrain`.
    pub fn packed_sources(
        &self,
    ) -> impl FnOnce(&RunConfig, &ModelConfig, &Tokenizer) -> crate::Result<Sources<PackedSource>> + '_
    {
        move |run, config, tokenizer| {
            let options = CorpusOptions {
                line_docs: self.line_docs,
                ..CorpusOptions::default()
            };
            packed_sources(run, config, tokenizer, options, self.val_fraction)
        }
    }

    /// The opening the training commands share: continue `--resume RUN_DIR`, or check that a new
    /// run has what it starts from (`from`; `missing_from` says how to pass it), `--out` and
    /// `--data` (`data_usage` names what it takes), prepare it with `new` and start it.
    pub fn resume_or_start<S: ExampleSource>(
        &self,
        (from, missing_from): (Option<&PathBuf>, &str),
        data_usage: &str,
        sources: impl FnOnce(&RunConfig, &ModelConfig, &Tokenizer) -> crate::Result<Sources<S>>,
        new: impl FnOnce(&Path) -> anyhow::Result<NewRun>,
    ) -> anyhow::Result<()> {
        let options = self.run_options();
        if let Some(run_dir) = &self.resume {
            let changes = ResumeChanges {
                max_steps: self.max_steps,
                micro_batch: self.micro_batch,
                dtype: self.dtype,
            };
            return drive(Run::resume(&options, run_dir, changes, sources)?);
        }
        let from = from.ok_or_else(|| anyhow!("{missing_from}"))?;
        let out = self
            .out
            .as_ref()
            .ok_or_else(|| anyhow!("pass --out RUN_DIR"))?;
        if self.data.is_empty() {
            bail!("pass --data {data_usage}");
        }
        if RunFiles::holds_run(out)? {
            bail!(
                "{} already holds a run; pass --resume {} to continue it, or choose another --out",
                out.display(),
                out.display()
            );
        }
        let run = new(from)?;
        drive(Run::start(&options, out, run, sources)?)
    }
}

/// Trains a set-up run and prints what it trains and where the result is.
fn drive<S: ExampleSource>(run: Run<S>) -> anyhow::Result<()> {
    let (rank, world) = (run.rank(), run.world_size());
    let c = run.config();
    if rank == 0 && run.val_batches().is_empty() && c.val_batches > 0 {
        eprintln!("warning: no validation documents (corpus too small for --val-fraction); validation is skipped");
    }
    if rank == 0 {
        eprintln!(
            "{} {}: {} parameters ({} compute), {} steps of {} tokens on {world} rank{}, from step {}",
            c.command,
            run.dir().display(),
            run.num_parameters(),
            c.dtype.dtype().as_str(),
            c.max_steps,
            world * c.micro_batch * c.grad_accum * c.seq_len,
            if world == 1 { "" } else { "s" },
            run.step()
        );
    }
    let summary = run.train()?;
    if rank > 0 {
        return Ok(());
    }
    eprintln!(
        "done: {} steps, last loss {:.4}{}; model at {}",
        summary.steps,
        summary.last_loss,
        summary
            .last_val
            .map_or(String::new(), |v| format!(", validation {v:.4} nats/token")),
        summary
            .checkpoint
            .map_or("(no checkpoint)".into(), |p| p.display().to_string())
    );
    Ok(())
}
