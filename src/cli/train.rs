//! `dlm adapt`, `dlm pretrain`, `dlm sft`: the options they share and the driver that sets up a
//! run (or resumes one) and hands it to `train::trainer`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use clap::Args;

use super::args::parse_device;
use crate::atomic::write_atomic;
use crate::data::corpus::CorpusOptions;
use crate::data::loader::{Batch, ExampleSource, Loader, LoaderConfig};
use crate::data::tokenizer::Tokenizer;
use crate::dist::{connect, launcher_world_size, local_rank, Communicator};
use crate::model::{ModelConfig, Weights};
use crate::rng::Rng;
use crate::train::adamw::AdamWConfig;
use crate::train::checkpoint::{self, TrainerState};
use crate::train::distributed::Optimizer;
use crate::train::objective::Objective;
use crate::train::params::{Precision, TrainableModel};
use crate::train::schedule::{Decay, Schedule};
use crate::train::trainer::{train, RunConfig, Session};

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
    /// cosine, constant or linear (after warmup).
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
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
    /// cpu, or cuda / cuda:N in a build with the `cuda` feature. With several ranks, `cuda`
    /// means the GPU of the rank's index on its node.
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
        let decay = match self.schedule.as_str() {
            "cosine" => Decay::Cosine,
            "constant" => Decay::Constant,
            "linear" => Decay::Linear,
            other => bail!("unknown schedule `{other}` (cosine, constant or linear)"),
        };
        if micro_batch == 0 || self.grad_accum == 0 || self.seq_len < 2 {
            bail!("micro-batch and accumulation must be ≥ 1 and seq-len ≥ 2");
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
                decay,
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
        })
    }

    pub fn corpus_options(&self, options: CorpusOptions) -> CorpusOptions {
        CorpusOptions {
            line_docs: self.line_docs,
            ..options
        }
    }
}

/// Files a run keeps beside its checkpoints: the run config and the tokenizer it trains with.
pub struct RunFiles {
    pub dir: PathBuf,
}

impl RunFiles {
    fn config_path(&self) -> PathBuf {
        self.dir.join("run_config.json")
    }

    pub fn tokenizer_dir(&self) -> PathBuf {
        self.dir.join("tokenizer")
    }

    /// Creates a new run directory; refuses to overwrite one that already has checkpoints.
    pub fn create(
        dir: &Path,
        run: &RunConfig,
        tokenizer: &Tokenizer,
        base: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if checkpoint::latest(dir)?.is_some() {
            bail!(
                "{} already holds a run; pass --resume {} to continue it, or choose another --out",
                dir.display(),
                dir.display()
            );
        }
        let files = Self {
            dir: dir.to_path_buf(),
        };
        std::fs::create_dir_all(files.tokenizer_dir())
            .with_context(|| format!("creating {}", dir.display()))?;
        write_atomic(
            &files.config_path(),
            serde_json::to_string_pretty(run)?.as_bytes(),
        )?;
        tokenizer.save(&files.tokenizer_dir().join("tokenizer.json"))?;
        for f in ["tokenizer_config.json", "generation_config.json"] {
            if let Some(src) = base.map(|b| b.join(f)).filter(|p| p.exists()) {
                std::fs::copy(&src, files.tokenizer_dir().join(f))?;
            }
        }
        Ok(files)
    }

    pub fn load_config(dir: &Path) -> anyhow::Result<RunConfig> {
        let path = dir.join("run_config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("reading {} (is this a dlm run directory?)", path.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: bad run config", path.display()))
    }
}

/// What a command sets up before the loop: the model, its config and where examples come from.
pub struct Setup<S> {
    pub config: ModelConfig,
    pub weights: Weights,
    pub train_source: S,
    pub val_source: Option<S>,
}

/// Seeds the LoRA factors' initial draw apart from the run's own random stream.
const LORA_INIT_STREAM: u64 = 0x4c6f_5241;

/// Runs (or resumes) a training session and prints where the result is.
pub fn drive<S: ExampleSource>(
    run: &RunConfig,
    run_dir: &Path,
    setup: Setup<S>,
    resume_from: Option<PathBuf>,
    args: &TrainArgs,
    comm: &dyn Communicator,
) -> anyhow::Result<()> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let device: Device = match args.device.as_str() {
        "cuda" if world > 1 => parse_device(&format!("cuda:{}", local_rank()))?,
        other => parse_device(other)?,
    };
    let files = RunFiles {
        dir: run_dir.to_path_buf(),
    };
    let mut model = match run.lora {
        None => TrainableModel::new(&setup.config, &setup.weights, &device)?,
        Some(lora) => {
            // The frozen base is kept once per run: a resumed run needs it unmerged.
            let (base, factors) = match &resume_from {
                Some(ckpt) => (
                    checkpoint::load_lora_base(run_dir)?,
                    Some(checkpoint::load_factors(ckpt)?),
                ),
                None => {
                    if rank == 0 {
                        checkpoint::save_lora_base(run_dir, &setup.weights)?;
                    }
                    (setup.weights, None)
                }
            };
            let mut init = Rng::seed(run.seed ^ LORA_INIT_STREAM);
            TrainableModel::with_lora(
                &setup.config,
                &base,
                lora,
                factors.as_ref(),
                &device,
                &mut init,
            )?
        }
    };
    model.set_precision(run.dtype, run_dir)?;
    let mut optimizer = Optimizer::new(run.optimizer, args.zero == 1, &model.vars, comm);
    // Every rank reads the global micro-batches and trains on its rows of each.
    let loader_config = LoaderConfig {
        batch_size: run.micro_batch * world,
        shuffle_buffer: args.shuffle_buffer,
        seed: run.seed,
    };
    let (mut state, mut loader) = match &resume_from {
        Some(dir) => {
            let (state, moments) = checkpoint::load_state(dir)?;
            optimizer.load_state_tensors(state.step, &moments)?;
            // The cursor counts examples, so the run may resume under another world size.
            let mut cursor = state.loader.clone();
            cursor.config.batch_size = loader_config.batch_size;
            let loader = Loader::from_state(setup.train_source, cursor)?;
            (state, loader)
        }
        None => {
            let loader = Loader::new(setup.train_source, loader_config)?;
            let state = TrainerState {
                step: 0,
                rng: Rng::seed(run.seed),
                loader: loader.state().clone(),
                tokens_seen: 0,
                skipped_nonfinite: 0,
            };
            (state, loader)
        }
    };
    let val_batches = match setup.val_source {
        Some(src) => first_batches(src, run.micro_batch, run.val_batches)?,
        None => Vec::new(),
    };
    if rank == 0 && val_batches.is_empty() && run.val_batches > 0 {
        eprintln!("warning: no validation documents (corpus too small for --val-fraction); validation is skipped");
    }
    if rank == 0 {
        eprintln!(
            "{} {}: {} parameters ({} compute), {} steps of {} tokens on {world} rank{}, from step {}",
            run.command,
            run_dir.display(),
            model.num_parameters(),
            run.dtype.dtype().as_str(),
            run.max_steps,
            world * run.micro_batch * run.grad_accum * run.seq_len,
            if world == 1 { "" } else { "s" },
            state.step
        );
    }
    let tokenizer_dir = files.tokenizer_dir();
    let summary = train(Session {
        run,
        run_dir,
        model: &mut model,
        model_config: &setup.config,
        optimizer: &mut optimizer,
        loader: &mut loader,
        val_batches: &val_batches,
        state: &mut state,
        tokenizer_dir: Some(&tokenizer_dir),
        device: &device,
        show_progress: !args.no_progress,
        comm,
    })?;
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

/// The first `n` batches of a source, in order (validation uses no shuffling).
fn first_batches<S: ExampleSource>(
    source: S,
    batch_size: usize,
    n: usize,
) -> anyhow::Result<Vec<Batch>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut loader = Loader::new(
        source,
        LoaderConfig {
            batch_size,
            shuffle_buffer: 1,
            seed: 0,
        },
    )?;
    let mut out = Vec::new();
    while out.len() < n {
        let batch = match loader.next_batch() {
            Ok(b) => b,
            Err(_) => break, // an empty validation split
        };
        if batch.epoch > 0 && !out.is_empty() {
            break;
        }
        out.push(batch);
    }
    Ok(out)
}

/// A run's (train, validation) example sources, built from its run config, model config and
/// tokenizer: the one thing that differs between adapt, pretrain and sft.
pub type Sources<S> = (S, Option<S>);

/// Continues the run in `run_dir` from its latest checkpoint (`--max-steps` may extend it).
pub fn resume<S: ExampleSource>(
    t: &TrainArgs,
    run_dir: &Path,
    sources: impl FnOnce(&RunConfig, &ModelConfig, &Tokenizer) -> anyhow::Result<Sources<S>>,
) -> anyhow::Result<()> {
    let mut run = RunFiles::load_config(run_dir)?;
    if let Some(steps) = t.max_steps {
        run.max_steps = steps;
        run.schedule.total_steps = steps;
    }
    if let Some(b) = t.micro_batch {
        if b == 0 {
            bail!("--micro-batch must be at least 1");
        }
        run.micro_batch = b;
    }
    if let Some(dtype) = t.dtype {
        run.dtype = dtype;
    }
    let (ckpt, config, weights) = resume_point(run_dir)?;
    let files = RunFiles {
        dir: run_dir.to_path_buf(),
    };
    let tokenizer = Tokenizer::from_file(&files.tokenizer_dir().join("tokenizer.json"))?;
    let (train_source, val_source) = sources(&run, &config, &tokenizer)?;
    let setup = Setup {
        config,
        weights,
        train_source,
        val_source,
    };
    let comm = connect(t.world_size, t.device.starts_with("cuda"))?;
    on_every_rank(comm.as_ref(), || {
        drive(&run, run_dir, setup, Some(ckpt), t, comm.as_ref())
    })
}

/// Starts a new run in `out` from prepared weights.
#[allow(clippy::too_many_arguments)]
pub fn start<S: ExampleSource>(
    t: &TrainArgs,
    run: &RunConfig,
    out: &Path,
    config: ModelConfig,
    weights: Weights,
    tokenizer: &Tokenizer,
    base: Option<&Path>,
    sources: impl FnOnce(&RunConfig, &ModelConfig, &Tokenizer) -> anyhow::Result<Sources<S>>,
) -> anyhow::Result<()> {
    let comm = connect(t.world_size, t.device.starts_with("cuda"))?;
    on_every_rank(comm.as_ref(), || {
        if comm.rank() == 0 {
            RunFiles::create(out, run, tokenizer, base)?;
        }
        let (train_source, val_source) = sources(run, &config, tokenizer)?;
        let setup = Setup {
            config,
            weights,
            train_source,
            val_source,
        };
        drive(run, out, setup, None, t, comm.as_ref())
    })
}

/// Runs one rank's part of a run. With several ranks an error ends them all (after printing it
/// with the rank), since the others would otherwise wait forever at their next collective.
fn on_every_rank(
    comm: &dyn Communicator,
    body: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let result = body();
    if let Err(e) = &result {
        if comm.world_size() > 1 {
            eprintln!("error: rank {}: {e:#}", comm.rank());
            comm.abort(1);
        }
    }
    result
}

/// Where to resume from: the run's latest checkpoint, with its model weights and config.
pub fn resume_point(run_dir: &Path) -> anyhow::Result<(PathBuf, ModelConfig, Weights)> {
    let dir = checkpoint::latest(run_dir)?.with_context(|| {
        format!(
            "{} has no completed checkpoint to resume from",
            run_dir.display()
        )
    })?;
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let weights = Weights::load_dir(&dir, config.arch, DType::F32, &Device::Cpu)?;
    Ok((dir, config, weights))
}
