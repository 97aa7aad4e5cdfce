//! The training loop around Algorithm 1: micro-batches with gradient accumulation, clipping,
//! AdamW, the learning-rate schedule, validation, checkpoints, logs and a progress bar.
//!
//! Data parallelism: every rank walks the same global stream of micro-batches of
//! `micro_batch × world_size` sequences, draws the noise for all of them from the shared RNG, and
//! trains on its own block of rows (`dist::shard_rows`). A rank's loss is its Σ(1/t)·CE divided by
//! the masked-target count of the whole global micro-batch, and gradients are summed over ranks,
//! so N ranks with micro-batch b compute the gradient of one rank with micro-batch N·b (up to
//! float rounding), for the diffusion objective too. (The reference, under DeepSpeed, divides by
//! each rank's own count and averages; that differs whenever ranks mask different numbers of
//! tokens.) Rank 0 alone validates, logs and writes checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::adamw::{clip_coefficient, AdamWConfig};
use super::checkpoint::{self, TrainerState};
use super::distributed::Optimizer;
use super::lora::LoraConfig;
use super::objective::Objective;
use super::params::{Precision, TrainableModel};
use super::schedule::Schedule;
use super::step::forward_loss;
use crate::data::loader::{Batch, ExampleSource, Loader};
use crate::dist::{shard_rows, Communicator};
use crate::error::{Error, OptionMessage, Result};
use crate::model::ModelConfig;
use crate::report::jsonl::JsonlLog;
use crate::rng::Rng;

/// Everything that defines a run; saved as run_config.json and the first log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub command: String,
    pub objective: Objective,
    pub seq_len: usize,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub optimizer: AdamWConfig,
    pub schedule: Schedule,
    /// Global-norm clipping threshold (None: no clipping).
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    pub max_steps: u64,
    pub val_every: u64,
    pub val_batches: usize,
    pub save_every: u64,
    /// Checkpoints kept (0: all).
    pub keep_last: usize,
    /// Skip (and count) steps with a non-finite loss or gradient instead of stopping.
    pub skip_nonfinite: bool,
    /// Where the data came from, for the record.
    pub data: Vec<PathBuf>,
    /// Validation text kept apart from `data` (instead of a split of it).
    #[serde(default)]
    pub val_data: Vec<PathBuf>,
    pub base: Option<PathBuf>,
    /// Train LoRA factors on a frozen base instead of every weight.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// The dtype of forward and backward (parameters and moments are f32 regardless).
    #[serde(default)]
    pub dtype: Precision,
    /// Training dropout on the residual stream (`LanguageModel::set_dropout`); 0: none, the
    /// reference's deterministic step.
    #[serde(default)]
    pub dropout: f32,
}

pub struct Session<'a, S: ExampleSource> {
    pub run: &'a RunConfig,
    pub run_dir: &'a Path,
    pub model: &'a mut TrainableModel,
    /// The config written with each checkpoint (mask id recorded).
    pub model_config: &'a ModelConfig,
    pub optimizer: &'a mut Optimizer,
    /// Yields global micro-batches: `micro_batch × world_size` sequences.
    pub loader: &'a mut Loader<S>,
    /// Fixed validation batches, scored with a fixed noise seed so curves are comparable.
    pub val_batches: &'a [Batch],
    pub state: &'a mut TrainerState,
    pub tokenizer_dir: Option<&'a Path>,
    pub device: &'a Device,
    pub show_progress: bool,
    pub comm: &'a dyn Communicator,
}

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub steps: u64,
    pub last_loss: f64,
    pub last_val: Option<f64>,
    pub checkpoint: Option<PathBuf>,
}

/// Validation: the 1/t-weighted bound in nats per candidate token (diffusion) or the mean
/// next-token cross-entropy (AR), averaged over the fixed batches.
pub fn validate(
    model: &TrainableModel,
    objective: &Objective,
    batches: &[Batch],
    device: &Device,
) -> Result<f64> {
    let mut rng = Rng::seed(0x0005_eed0_f7a1);
    let (mut total, mut count) = (0.0f64, 0usize);
    for batch in batches {
        // Validation always uses the final attention (bidirectional for diffusion).
        let prepared = objective.prepare(batch, u64::MAX - 1, &mut rng, device)?;
        let loss = forward_loss(
            model.model.as_ref(),
            &prepared.input,
            &prepared.mask,
            &prepared.targets,
            device,
        )?;
        total += loss.bound_sum as f64;
        count += prepared.candidate_targets;
    }
    Ok(if count == 0 {
        0.0
    } else {
        total / count as f64
    })
}

fn add_grads(acc: &mut Vec<(String, Tensor)>, new: Vec<(String, Tensor)>) -> Result<()> {
    if acc.is_empty() {
        *acc = new;
        return Ok(());
    }
    for ((_, a), (_, g)) in acc.iter_mut().zip(new) {
        *a = (&*a + g)?;
    }
    Ok(())
}

fn progress_bar(total: u64, start: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    bar
}

/// This rank's share of the loss: its normaliser (target count, or sequences for the families
/// that divide by those) over the global micro-batch's (1 for one rank).
fn target_share(comm: &dyn Communicator, normaliser: usize) -> Result<f64> {
    let mut n = [normaliser as f64];
    comm.all_reduce_sum_f64(&mut n)?;
    // Nothing masked anywhere: every rank's loss is an exact zero, any share will do.
    Ok(if n[0] == 0.0 {
        1.0
    } else {
        normaliser as f64 / n[0]
    })
}

/// The seed of step `step`'s dropout masks on `rank`.
fn dropout_seed(seed: u64, step: u64, rank: usize) -> u64 {
    const STREAM: u64 = 0xd50f_0a7e_5eed_0001;
    let mut rng = Rng::seed(seed ^ STREAM);
    let base = rng.next_u64();
    Rng::seed(base ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (rank as u64).rotate_left(40))
        .next_u64()
}

/// Runs from `state.step` to `run.max_steps`, saving every `save_every` steps and at the end.
pub fn train<S: ExampleSource>(s: Session<'_, S>) -> Result<Summary> {
    let run = s.run;
    let (rank, world) = (s.comm.rank(), s.comm.world_size());
    let log = match rank {
        0 => Some(JsonlLog::append(&s.run_dir.join("metrics.jsonl"))?),
        _ => None,
    };
    let write = |value: serde_json::Value| log.as_ref().map_or(Ok(()), |l| l.write(&value));
    if s.state.step == 0 {
        write(json!({"kind": "config", "run": run, "world_size": world}))?;
    }
    let bar = progress_bar(run.max_steps, s.state.step, s.show_progress && rank == 0);
    let mut summary = Summary::default();
    while s.state.step < run.max_steps {
        let step = s.state.step;
        let started = Instant::now();
        let (mut grads, mut tokens, mut ratio) = (Vec::new(), 0, 1.0);
        // [weighted, unweighted] loss of the global batch, summed over ranks below.
        let mut losses = [0.0f64; 2];
        if let Some(dropout) = s.model.dropout() {
            // Masks from the run's seed, the step and the rank: a resumed run draws the same.
            dropout.train(dropout_seed(run.seed, step, rank));
        }
        for _ in 0..run.grad_accum {
            let batch = s.loader.next_batch()?;
            let rows = shard_rows(batch.ids.len(), rank, world);
            let prepared =
                run.objective
                    .prepare_rows(&batch, rows, step, &mut s.state.rng, s.device)?;
            let loss = forward_loss(
                s.model.model.as_ref(),
                &prepared.input,
                &prepared.mask,
                &prepared.targets,
                s.device,
            )?;
            let share = target_share(s.comm, loss.normaliser)?;
            let scaled = (&loss.weighted * (share / run.grad_accum as f64))?;
            add_grads(&mut grads, s.model.gradients(&scaled.backward()?)?)?;
            losses[0] += loss.weighted.to_scalar::<f32>()? as f64 * share / run.grad_accum as f64;
            losses[1] += loss.unweighted as f64 * share / run.grad_accum as f64;
            tokens += batch.ids.iter().map(Vec::len).sum::<usize>();
            ratio = prepared.anneal_ratio;
        }
        if let Some(dropout) = s.model.dropout() {
            dropout.eval();
        }
        s.comm.all_reduce_sum_f64(&mut losses)?;
        let [loss_sum, unweighted_sum] = losses;
        let lr = run.schedule.lr(step);
        // An update that depends on no global quantity runs as the gradient sums arrive.
        let apply_at = (run.max_grad_norm.is_none() && !run.skip_nonfinite).then_some(lr);
        let (grads, norm) = s.optimizer.reduce(s.comm, &s.model.vars, grads, apply_at)?;
        if !loss_sum.is_finite() || !norm.is_finite() {
            if run.skip_nonfinite {
                s.state.skipped_nonfinite += 1;
                s.state.step += 1;
                write(
                    json!({"kind": "skipped", "step": step, "loss": loss_sum, "grad_norm": norm}),
                )?;
                continue;
            }
            let last = checkpoint::latest(s.run_dir)?;
            return Err(Error::InvalidOption(
                OptionMessage::default()
                    .text(format!(
                        "non-finite loss ({loss_sum}) or gradient norm ({norm}) at step {step}; stopping. Last good checkpoint: {}. Lower the learning rate, or turn on ",
                        last.map_or("none".into(), |p| p.display().to_string())
                    ))
                    .setting("skip_nonfinite")
                    .text("."),
            ));
        }
        s.optimizer.step(
            s.comm,
            &s.model.vars,
            grads,
            lr,
            clip_coefficient(norm, run.max_grad_norm),
        )?;
        s.model.rebuild(s.run_dir)?;
        s.state.step += 1;
        s.state.tokens_seen += tokens as u64;
        let secs = started.elapsed().as_secs_f64();
        write(json!({
            "kind": "train", "step": s.state.step, "loss": loss_sum, "unweighted_loss": unweighted_sum,
            "lr": lr, "grad_norm": norm, "anneal_ratio": ratio, "tokens": s.state.tokens_seen,
            "tokens_per_s": tokens as f64 / secs, "seconds": secs,
        }))?;
        summary.last_loss = loss_sum;
        bar.set_position(s.state.step);
        bar.set_message(format!(
            "loss {loss_sum:.4} lr {lr:.2e} {:.0} tok/s",
            tokens as f64 / secs
        ));
        let done = s.state.step == run.max_steps;
        if rank == 0
            && !s.val_batches.is_empty()
            && (done || (run.val_every > 0 && s.state.step.is_multiple_of(run.val_every)))
        {
            let val = validate(s.model, &run.objective, s.val_batches, s.device)?;
            write(
                json!({"kind": "val", "step": s.state.step, "val_loss": val, "tokens": s.state.tokens_seen}),
            )?;
            summary.last_val = Some(val);
        }
        if done || (run.save_every > 0 && s.state.step.is_multiple_of(run.save_every)) {
            // Gathering sharded moments is a collective: every rank takes part, rank 0 writes.
            let moments = s.optimizer.state_tensors(s.comm, &s.model.vars)?;
            s.state.loader = s.loader.state().clone();
            if rank == 0 {
                let dir = checkpoint::save(
                    s.run_dir,
                    s.model,
                    s.model_config,
                    &moments,
                    s.state,
                    s.tokenizer_dir,
                )?;
                checkpoint::prune(s.run_dir, run.keep_last)?;
                summary.checkpoint = Some(dir);
            }
        }
    }
    bar.finish_and_clear();
    // The curve is for people; a missing font must not fail a finished run.
    let png = s.run_dir.join("loss.png");
    if rank == 0 {
        if let Err(e) =
            crate::report::plot::loss_curve(&s.run_dir.join("metrics.jsonl"), &png, &run.command)
        {
            eprintln!("warning: no loss plot: {e}");
        }
    }
    summary.steps = s.state.step;
    Ok(summary)
}
