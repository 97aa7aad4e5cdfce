//! A training run as a program drives it: start one in a new directory or resume one from its
//! latest checkpoint ([`Run::start`], [`Run::resume`]), look at what was set up, then
//! [`Run::train`]. Every rank of a data-parallel run makes the same calls.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::checkpoint::{self, TrainerState};
use super::distributed::Optimizer;
use super::params::{Precision, TrainableModel};
use super::run_dir::{resume_point, RunFiles};
use super::sources::Sources;
use super::trainer::{train, RunConfig, Session, Summary};
use crate::data::loader::{Batch, ExampleSource, Loader, LoaderConfig};
use crate::data::tokenizer::Tokenizer;
use crate::dist::{connect, local_rank, Communicator};
use crate::error::{Error, Result};
use crate::model::runtime::DeviceSpec;
use crate::model::{ModelConfig, Weights};
use crate::rng::Rng;

/// How a run executes, as opposed to what it trains ([`RunConfig`], saved with the run).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// With several ranks, plain `cuda` means the GPU of the rank's index on its node.
    pub device: DeviceSpec,
    /// Data-parallel ranks; `None`: the launcher's size, or 1.
    pub world_size: Option<usize>,
    /// ZeRO stage 1: each rank keeps 1/N of the AdamW moments.
    pub zero1: bool,
    /// Examples per shuffle window.
    pub shuffle_buffer: usize,
    pub show_progress: bool,
}

/// What a resumed run may change; everything else is the saved run's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResumeChanges {
    /// The new total (the schedule stretches to it).
    pub max_steps: Option<u64>,
    /// Sequences per micro-batch and rank, e.g. to keep the global batch under another world
    /// size.
    pub micro_batch: Option<usize>,
    pub dtype: Option<Precision>,
}

/// What a new run starts from: its config, the prepared model and the tokenizer it trains with.
pub struct NewRun {
    pub run: RunConfig,
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
}

/// Seeds the LoRA factors' initial draw apart from the run's own random stream.
const LORA_INIT_STREAM: u64 = 0x4c6f_5241;

/// One rank's run, set up and ready to train.
pub struct Run<S: ExampleSource> {
    parts: Parts<S>,
    comm: Box<dyn Communicator>,
}

/// Everything the loop needs but the communicator.
struct Parts<S: ExampleSource> {
    run: RunConfig,
    dir: PathBuf,
    model_config: ModelConfig,
    model: TrainableModel,
    optimizer: Optimizer,
    loader: Loader<S>,
    val_batches: Vec<Batch>,
    state: TrainerState,
    device: Device,
    show_progress: bool,
}

impl<S: ExampleSource> Run<S> {
    /// Starts a new run in `dir` (rank 0 writes the run files); refuses a directory that already
    /// holds a run.
    pub fn start(
        opts: &RunOptions,
        dir: &Path,
        new: NewRun,
        sources: impl FnOnce(&RunConfig, &ModelConfig, &Tokenizer) -> Result<Sources<S>>,
    ) -> Result<Self> {
        let comm = connect(opts.world_size, opts.device.is_cuda())?;
        let parts = on_every_rank(comm.as_ref(), || {
            // An unusable device is refused before the run directory is written.
            let device = rank_device(opts, comm.as_ref())?;
            if comm.rank() == 0 {
                RunFiles::create(dir, &new.run, &new.tokenizer)?;
            }
            let sources = sources(&new.run, &new.config, &new.tokenizer)?;
            let model = (new.config, new.weights);
            Parts::new(
                opts,
                device,
                new.run,
                dir,
                model,
                sources,
                None,
                comm.as_ref(),
            )
        })?;
        Ok(Self { parts, comm })
    }

    /// Continues the run in `dir` exactly where its latest checkpoint stopped.
    pub fn resume(
        opts: &RunOptions,
        dir: &Path,
        changes: ResumeChanges,
        sources: impl FnOnce(&RunConfig, &ModelConfig, &Tokenizer) -> Result<Sources<S>>,
    ) -> Result<Self> {
        let mut run = RunFiles::load_config(dir)?;
        if let Some(steps) = changes.max_steps {
            run.max_steps = steps;
            run.schedule.total_steps = steps;
        }
        if let Some(b) = changes.micro_batch {
            if b == 0 {
                return Err(Error::option("micro_batch", "must be at least 1"));
            }
            run.micro_batch = b;
        }
        if let Some(dtype) = changes.dtype {
            run.dtype = dtype;
        }
        let (ckpt, config, weights) = resume_point(dir)?;
        let tokenizer = RunFiles::new(dir).tokenizer()?;
        let sources = sources(&run, &config, &tokenizer)?;
        let comm = connect(opts.world_size, opts.device.is_cuda())?;
        let parts = on_every_rank(comm.as_ref(), || {
            let model = (config, weights);
            let device = rank_device(opts, comm.as_ref())?;
            Parts::new(
                opts,
                device,
                run,
                dir,
                model,
                sources,
                Some(ckpt),
                comm.as_ref(),
            )
        })?;
        Ok(Self { parts, comm })
    }

    pub fn config(&self) -> &RunConfig {
        &self.parts.run
    }

    pub fn dir(&self) -> &Path {
        &self.parts.dir
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    pub fn num_parameters(&self) -> usize {
        self.parts.model.num_parameters()
    }

    /// The step training continues from (0 for a new run).
    pub fn step(&self) -> u64 {
        self.parts.state.step
    }

    /// The fixed validation batches (none when the validation split is empty or not asked for).
    pub fn val_batches(&self) -> &[Batch] {
        &self.parts.val_batches
    }

    /// Trains up to the run's `max_steps`, checkpointing as configured.
    pub fn train(self) -> Result<Summary> {
        let Self { parts: mut p, comm } = self;
        let tokenizer_dir = RunFiles::new(&p.dir).tokenizer_dir();
        on_every_rank(comm.as_ref(), || {
            train(Session {
                run: &p.run,
                run_dir: &p.dir,
                model: &mut p.model,
                model_config: &p.model_config,
                optimizer: &mut p.optimizer,
                loader: &mut p.loader,
                val_batches: &p.val_batches,
                state: &mut p.state,
                tokenizer_dir: Some(&tokenizer_dir),
                device: &p.device,
                show_progress: p.show_progress,
                comm: comm.as_ref(),
            })
        })
    }
}

/// This rank's device, opened.
fn rank_device(opts: &RunOptions, comm: &dyn Communicator) -> Result<Device> {
    opts.device.for_rank(comm.world_size(), local_rank()).open()
}

impl<S: ExampleSource> Parts<S> {
    /// The model on its device (LoRA over its frozen base where configured), the optimizer, the
    /// loader and its state, fresh or from checkpoint `resume_from`, and the validation batches.
    #[allow(clippy::too_many_arguments)]
    fn new(
        opts: &RunOptions,
        device: Device,
        run: RunConfig,
        dir: &Path,
        (config, weights): (ModelConfig, Weights),
        (train_source, val_source): Sources<S>,
        resume_from: Option<PathBuf>,
        comm: &dyn Communicator,
    ) -> Result<Self> {
        let (rank, world) = (comm.rank(), comm.world_size());
        let mut model = match run.lora {
            None => TrainableModel::new(&config, &weights, &device)?,
            Some(lora) => {
                // The frozen base is kept once per run: a resumed run needs it unmerged.
                let (base, factors) = match &resume_from {
                    Some(ckpt) => (
                        checkpoint::load_lora_base(dir)?,
                        Some(checkpoint::load_factors(ckpt)?),
                    ),
                    None => {
                        if rank == 0 {
                            checkpoint::save_lora_base(dir, &weights)?;
                        }
                        (weights, None)
                    }
                };
                let mut init = Rng::seed(run.seed ^ LORA_INIT_STREAM);
                let factors = factors.as_ref();
                TrainableModel::with_lora(&config, &base, lora, factors, &device, &mut init)?
            }
        };
        model.set_precision(run.dtype, dir)?;
        model.set_dropout(run.dropout)?;
        let mut optimizer = Optimizer::new(run.optimizer, opts.zero1, &model.vars, comm);
        // Every rank reads the global micro-batches and trains on its rows of each.
        let loader_config = LoaderConfig {
            batch_size: run.micro_batch * world,
            shuffle_buffer: opts.shuffle_buffer,
            seed: run.seed,
        };
        let (state, loader) = match &resume_from {
            Some(ckpt) => {
                let (state, moments) = checkpoint::load_state(ckpt)?;
                optimizer.load_state_tensors(state.step, &moments)?;
                // The cursor counts examples, so the run may resume under another world size.
                let mut cursor = state.loader.clone();
                cursor.config.batch_size = loader_config.batch_size;
                (state, Loader::from_state(train_source, cursor)?)
            }
            None => {
                let loader = Loader::new(train_source, loader_config)?;
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
        let val_batches = match val_source {
            Some(src) => first_batches(src, run.micro_batch, run.val_batches)?,
            None => Vec::new(),
        };
        Ok(Self {
            run,
            dir: dir.to_path_buf(),
            model_config: config,
            model,
            optimizer,
            loader,
            val_batches,
            state,
            device,
            show_progress: opts.show_progress,
        })
    }
}

/// The first `n` batches of a source, in order (validation uses no shuffling), at most one
/// pass; none from an empty source. A source that cannot be read is an error.
fn first_batches<S: ExampleSource>(source: S, batch_size: usize, n: usize) -> Result<Vec<Batch>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let config = LoaderConfig {
        batch_size,
        shuffle_buffer: 1,
        seed: 0,
    };
    let mut loader = Loader::new(source, config)?;
    let mut out = Vec::new();
    while out.len() < n {
        let Some(batch) = loader.try_next_batch()? else {
            break;
        };
        if batch.epoch > 0 && !out.is_empty() {
            break;
        }
        out.push(batch);
    }
    Ok(out)
}

/// Runs one rank's part of a run. With several ranks an error ends them all (after printing it
/// with the rank), since the others would otherwise wait forever at their next collective.
fn on_every_rank<T>(comm: &dyn Communicator, body: impl FnOnce() -> Result<T>) -> Result<T> {
    let result = body();
    if let Err(e) = &result {
        if comm.world_size() > 1 {
            eprintln!("error: rank {}: {e}", comm.rank());
            comm.abort(1);
        }
    }
    result
}
