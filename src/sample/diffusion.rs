//! Algorithm 2 (paper §3, reference-semantics §2.1): the denoising loop shared by every diffusion
//! sampler. Each step runs one bidirectional forward over a batch of canvases, proposes a token
//! for every undecided position, then a commit rule (`topk_confidence`, `random_keep`, `unmask`)
//! decides which proposals become final.
//!
//! Reference semantics kept here:
//! * Shift at inference: position i takes its token from logits row i − 1; position 0 keeps the
//!   input token (`Canvas::first`) and takes row 0's score, as the reference shifts the scores.
//! * Fixed and committed positions are frozen; their proposals are their current tokens.
//! * T forwards in total; after the last one every remaining masked position commits.
//! * Each step's proposals are fresh; nothing uncommitted carries over.
//!
//! `HeadRows::All` is the exact path: the LM head runs on every row and a token is drawn at every
//! position, as the reference does. `HeadRows::Needed` runs the head only on the rows whose
//! proposal can matter and stops a canvas once nothing is masked; with the same draws it yields the
//! same canvases (argmax: identical; sampling: the per-row seeds differ, so a different sample).

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::canvas::Canvas;
use super::events::{OnStep, StepEvent};
use super::filter::{choose, TokenChoice};
use super::kv_reuse::{CacheMode, StepCache};
use super::unmask::{
    distribution_score, linear_remaining, plan, ranked_commits, Candidate, Phase, Rule,
};
use super::{random_keep, topk_confidence};
use crate::error::{Error, Result};
use crate::model::LanguageModel;
use crate::ops::{AttentionMask, Greedy};
use crate::rng::Rng;

/// Which commit rule runs after each forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// Reference `trainer.py::generate_samples`: floor(N·t/T) lowest scores stay masked.
    TopkConfidence,
    /// Reference `model.py::generate_samples`: each masked position commits with p = 1/(t+1).
    RandomKeep,
    /// A ranking rule with a linear schedule (beyond the reference).
    Ranked(Rule),
}

/// Which rows go through the LM head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRows {
    /// Every row, every step, T forwards: the reference's work.
    All,
    /// Only rows that feed an undecided position (or, for top-k confidence, a position that
    /// competes in its ranking); finished canvases leave the batch.
    Needed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionOptions {
    /// T: forwards per canvas (clamped to the masked count; shared among blocks).
    pub steps: usize,
    pub sampler: Sampler,
    pub choice: TokenChoice,
    /// Parallel decoding: also commit every masked position whose token has probability above it.
    pub threshold: Option<f32>,
    /// Semi-autoregressive blocks of this many generated positions, left to right.
    pub block_length: Option<usize>,
    pub head_rows: HeadRows,
    /// Reuse keys and values across the steps of a block (`--cache`, approximate; see
    /// `kv_reuse`).
    pub cache: CacheMode,
}

impl DiffusionOptions {
    /// The evaluation scripts' sampler: top-k confidence with argmax, all rows.
    pub fn reference(steps: usize) -> Self {
        Self {
            steps,
            sampler: Sampler::TopkConfidence,
            choice: TokenChoice::Greedy,
            threshold: None,
            block_length: None,
            head_rows: HeadRows::All,
            cache: CacheMode::None,
        }
    }

    /// Checks the options on their own (no canvas needed): what `sample` refuses up front.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::Input("--steps must be at least 1".into()));
        }
        if let Some(p) = self.threshold {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::Input(format!("--threshold {p} is not in [0, 1)")));
            }
        }
        let extended = self.threshold.is_some() || self.block_length.is_some();
        if extended && !matches!(self.sampler, Sampler::Ranked(_)) {
            return Err(Error::Input(
                "--threshold and --block-length need a ranking sampler \
                 (confidence, margin, entropy or random), not a reference one"
                    .into(),
            ));
        }
        if self.head_rows == HeadRows::All && self.cache != CacheMode::None {
            return Err(Error::Input(
                "exact runs the reference's full work; it excludes --cache".into(),
            ));
        }
        Ok(())
    }
}

/// What a run cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleReport {
    /// Batched forwards run.
    pub forwards: usize,
    /// Rows that went through the LM head, over all forwards.
    pub head_rows: usize,
    /// Forwards per canvas.
    pub steps: Vec<usize>,
}

/// Where one canvas is in its schedule.
struct Progress {
    phases: Vec<Phase>,
    phase: usize,
    step: usize,
    /// Forwards done so far.
    done: usize,
    total: usize,
}

/// One proposal: the token, its log-probability after temperature, and its rank score.
struct Pick {
    token: u32,
    logprob: f32,
    rank: f32,
}

fn pick(logits: &[f32], choice: TokenChoice, rule: Option<Rule>, rng: &mut Rng) -> Pick {
    let (token, logprob) = choose(logits, choice, rng);
    match rule {
        Some(r) if r.needs_distribution() => {
            let rank = match choice {
                TokenChoice::Sample { temperature, .. } => {
                    let t: Vec<f32> = logits.iter().map(|x| x / temperature).collect();
                    distribution_score(r, &t)
                }
                TokenChoice::Greedy => distribution_score(r, logits),
            };
            Pick {
                token,
                logprob,
                rank,
            }
        }
        _ => propose(token, logprob, rule, rng),
    }
}

/// A proposal ranked by its log-probability, or at random under `Rule::Random`.
fn propose(token: u32, logprob: f32, rule: Option<Rule>, rng: &mut Rng) -> Pick {
    let rank = match rule {
        Some(Rule::Random) => rng.uniform_f32(),
        _ => logprob,
    };
    Pick {
        token,
        logprob,
        rank,
    }
}

fn check_canvases(model: &dyn LanguageModel, canvases: &[Canvas]) -> Result<()> {
    let cfg = model.config();
    let l = canvases[0].len();
    for (b, c) in canvases.iter().enumerate() {
        if c.len() != l {
            return Err(Error::Input(format!(
                "canvas {b} has {} positions but canvas 0 has {l}; one batch needs one length",
                c.len()
            )));
        }
        if c.len() > cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "the canvas ({} positions: prompt, suffix and generated tokens) exceeds the \
                 model's context of {} positions",
                c.len(),
                cfg.max_position_embeddings
            )));
        }
        let worst = c.ids.iter().chain([&c.mask_id, &c.first]).max();
        if let Some(&id) = worst.filter(|&&id| id as usize >= cfg.vocab_size) {
            return Err(Error::Input(format!(
                "canvas {b}: token id {id} is outside the model's vocabulary ({})",
                cfg.vocab_size
            )));
        }
    }
    Ok(())
}

/// Positions whose proposal is computed this step.
fn wanted(c: &Canvas, p: &Progress, opts: &DiffusionOptions) -> Vec<usize> {
    match (opts.head_rows, p.phases.get(p.phase)) {
        (HeadRows::All, _) => (0..c.len()).collect(),
        (HeadRows::Needed, None) => vec![],
        // Committed positions compete in the top-k ranking (quirk), so they need scores too.
        (HeadRows::Needed, Some(ph)) if opts.sampler == Sampler::TopkConfidence => {
            ph.positions.clone()
        }
        (HeadRows::Needed, Some(ph)) => ph
            .positions
            .iter()
            .copied()
            .filter(|&i| c.masked[i])
            .collect(),
    }
}

/// The span of the canvas's current phase (block): every position before it is decided.
fn phase_span(c: &Canvas, p: &Progress) -> (usize, usize) {
    match p.phases.get(p.phase) {
        Some(ph) => {
            let first = ph.positions.iter().copied().min().unwrap_or(c.len());
            let last = ph.positions.iter().copied().max().unwrap_or(c.len());
            (first, last + 1)
        }
        None => (c.len(), c.len()),
    }
}

/// Runs the loop on `canvases` (one length), in place: on return every position is decided.
/// `on_step` sees every step of every canvas.
///
/// # Shapes
/// One forward takes ids [B, L] (B = canvases still running) and the head sees [R, D] rows.
pub fn sample(
    model: &dyn LanguageModel,
    canvases: &mut [Canvas],
    opts: &DiffusionOptions,
    rng: &mut Rng,
    device: &Device,
    on_step: &mut OnStep,
) -> Result<SampleReport> {
    sample_until(model, canvases, opts, rng, device, on_step, &|_| false)
}

/// `sample`, with a way out: before each forward, every running canvas `b` with `stop(b)` leaves
/// the batch as it is (still partly masked) while the others carry on. A server stops the
/// canvases of clients that went away or ran out of time.
pub fn sample_until(
    model: &dyn LanguageModel,
    canvases: &mut [Canvas],
    opts: &DiffusionOptions,
    rng: &mut Rng,
    device: &Device,
    on_step: &mut OnStep,
    stop: &dyn Fn(usize) -> bool,
) -> Result<SampleReport> {
    opts.validate()?;
    let mut report = SampleReport {
        steps: vec![0; canvases.len()],
        ..Default::default()
    };
    if canvases.is_empty() {
        return Ok(report);
    }
    check_canvases(model, canvases)?;
    let l = canvases[0].len();
    let mut progress = canvases
        .iter()
        .map(|c| {
            let phases = plan(&c.generated(), opts.steps, opts.block_length)?;
            let total = phases.iter().map(|p| p.steps).sum();
            Ok(Progress {
                phases,
                phase: 0,
                step: 0,
                done: 0,
                total,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let rule = match opts.sampler {
        Sampler::Ranked(r) => Some(r),
        _ => None,
    };
    // The reference samplers run all T forwards even once nothing is masked; only the needed-rows
    // path (whose output is the same) and the ranking rules stop a phase early.
    let early_exit = opts.head_rows == HeadRows::Needed || rule.is_some();
    let mut cache = None;

    loop {
        for (b, p) in progress.iter_mut().enumerate() {
            if p.phase < p.phases.len() && stop(b) {
                p.phase = p.phases.len();
            }
        }
        let active: Vec<usize> = (0..canvases.len())
            .filter(|&b| progress[b].phase < progress[b].phases.len())
            .collect();
        if active.is_empty() {
            return Ok(report);
        }
        let ids: Vec<u32> = active
            .iter()
            .flat_map(|&b| canvases[b].ids.clone())
            .collect();
        let ids = Tensor::from_vec(ids, (active.len(), l), device)?;
        // Hidden states of positions `offset..offset + window` (all of them without a cache).
        let (hidden, offset) = if opts.cache == CacheMode::None {
            let hidden = model.hidden(&ids, &AttentionMask::Bidirectional, None)?;
            (hidden, 0)
        } else {
            let spans: Vec<(usize, usize)> = active
                .iter()
                .map(|&b| phase_span(&canvases[b], &progress[b]))
                .collect();
            // With the shift, the first undecided position reads the row before it.
            let start = spans
                .iter()
                .map(|s| s.0)
                .min()
                .unwrap_or(0)
                .saturating_sub(1);
            let end = match opts.cache {
                CacheMode::Dual => spans.iter().map(|s| s.1).max().unwrap_or(l),
                _ => l,
            };
            StepCache::forward(&mut cache, model, &ids, &active, (start, end))?
        };
        let window = hidden.dim(1)?;
        report.forwards += 1;

        // (active index, position, flat logits row): position i reads row i − 1, position 0 row 0.
        // The cached positions outside the window are not proposed: left of it they are decided,
        // right of it they belong to later blocks.
        let tasks: Vec<(usize, usize, usize)> = active
            .iter()
            .enumerate()
            .flat_map(|(a, &b)| {
                wanted(&canvases[b], &progress[b], opts)
                    .into_iter()
                    .filter(move |&i| offset == 0 || i > offset)
                    .filter(move |&i| i.saturating_sub(1) < offset + window)
                    .map(move |i| (a, i, a * window + i.saturating_sub(1) - offset))
            })
            .collect();
        let seeds: Vec<u64> = tasks.iter().map(|_| rng.next_u64()).collect();
        let picks: Vec<Pick> = if tasks.is_empty() {
            vec![]
        } else {
            // Greedy choice ranked by its own probability needs no logits beyond each row's
            // maximum and normaliser, which the head computes without writing the logits.
            let greedy =
                opts.choice == TokenChoice::Greedy && !rule.is_some_and(|r| r.needs_distribution());
            let head = head_rows(model, &hidden, &tasks, opts.head_rows, greedy)?;
            report.head_rows += head.len()?;
            match &head.values {
                HeadValues::Greedy(rows) => tasks
                    .iter()
                    .zip(&seeds)
                    .map(|(&(_, _, row), &seed)| {
                        let g = rows[head.index(row)];
                        propose(g.token, g.logprob, rule, &mut Rng::seed(seed))
                    })
                    .collect(),
                // Borrowed in place on the CPU: the full-logits path would otherwise copy B·L·V
                // floats.
                HeadValues::Logits(logits) => {
                    let vocab = logits.dim(1)?;
                    crate::ops::cpu::with_data(logits, |data| {
                        Ok(tasks
                            .par_iter()
                            .zip(&seeds)
                            .map(|(&(_, _, row), &seed)| {
                                let start = head.index(row) * vocab;
                                let row = &data[start..start + vocab];
                                pick(row, opts.choice, rule, &mut Rng::seed(seed))
                            })
                            .collect())
                    })?
                }
            }
        };

        let mut by_canvas: Vec<Vec<(usize, Pick)>> = active.iter().map(|_| vec![]).collect();
        for (&(a, i, _), p) in tasks.iter().zip(picks) {
            by_canvas[a].push((i, p));
        }
        for (a, &b) in active.iter().enumerate() {
            let picks = std::mem::take(&mut by_canvas[a]);
            step_canvas(
                b,
                &mut canvases[b],
                &mut progress[b],
                picks,
                opts,
                early_exit,
                rng,
                on_step,
            );
            report.steps[b] += 1;
        }
    }
}

/// The head's output on the rows a step needs; `rows` maps flat row indices to their row here
/// (None: every row, in order).
struct HeadOutput {
    values: HeadValues,
    rows: Option<Vec<u32>>,
}

enum HeadValues {
    /// [R, V], f32.
    Logits(Tensor),
    /// Each row's greedy choice.
    Greedy(Vec<Greedy>),
}

impl HeadOutput {
    /// Where flat row `r` is in the output.
    fn index(&self, r: usize) -> usize {
        match &self.rows {
            // Every task's row was put in `rows`, so the search always succeeds.
            Some(rows) => rows.binary_search(&(r as u32)).unwrap_or(0),
            None => r,
        }
    }

    /// Rows that went through the head.
    fn len(&self) -> Result<usize> {
        Ok(match &self.values {
            HeadValues::Logits(t) => t.dim(0)?,
            HeadValues::Greedy(g) => g.len(),
        })
    }
}

/// Runs the head on the rows `tasks` need (all rows on the exact path): their logits, or with
/// `greedy` only each row's greedy choice.
fn head_rows(
    model: &dyn LanguageModel,
    hidden: &Tensor,
    tasks: &[(usize, usize, usize)],
    mode: HeadRows,
    greedy: bool,
) -> Result<HeadOutput> {
    let (b, l, d) = hidden.dims3()?;
    let flat = hidden.reshape((b * l, d))?; // [B·L, D]
    let (input, rows) = if mode == HeadRows::All {
        // The reference's work: the head on every row [B·L], whichever rows are used.
        (flat, None)
    } else {
        let mut rows: Vec<u32> = tasks.iter().map(|t| t.2 as u32).collect();
        rows.sort_unstable();
        rows.dedup();
        let index = Tensor::new(rows.as_slice(), hidden.device())?;
        (flat.index_select(&index, 0)?, Some(rows))
    };
    let values = if greedy {
        HeadValues::Greedy(model.head_greedy(&input)?)
    } else {
        HeadValues::Logits(model.head(&input)?.to_dtype(DType::F32)?)
    };
    Ok(HeadOutput { values, rows })
}

/// Applies one step's proposals to one canvas: commit, advance the schedule, report.
#[allow(clippy::too_many_arguments)]
fn step_canvas(
    index: usize,
    c: &mut Canvas,
    p: &mut Progress,
    picks: Vec<(usize, Pick)>,
    opts: &DiffusionOptions,
    early_exit: bool,
    rng: &mut Rng,
    on_step: &mut OnStep,
) {
    let input = c.ids.clone();
    let mut proposal = c.ids.clone();
    let mut scores = vec![f32::NAN; c.len()];
    let mut ranks = vec![f32::NAN; c.len()];
    for (i, pk) in picks {
        scores[i] = pk.logprob;
        ranks[i] = pk.rank;
        if c.masked[i] {
            proposal[i] = if i == 0 { c.first } else { pk.token };
        }
    }
    let phase = &p.phases[p.phase];
    let t = phase.steps - 1 - p.step.min(phase.steps - 1);
    let masked: Vec<usize> = phase
        .positions
        .iter()
        .copied()
        .filter(|&i| c.masked[i])
        .collect();
    let mut kept_masked = None;
    let commits = if t == 0 {
        masked
    } else {
        match opts.sampler {
            Sampler::TopkConfidence => {
                let keep = topk_confidence::cutoff_len(phase.positions.len(), t, phase.steps);
                kept_masked = Some(keep);
                let mut maskable = vec![false; c.len()];
                phase.positions.iter().for_each(|&i| maskable[i] = true);
                topk_confidence::commits(&scores, &maskable, &c.masked, keep)
            }
            Sampler::RandomKeep => {
                let draws: Vec<f64> = masked.iter().map(|_| rng.uniform_f64()).collect();
                random_keep::commits(&masked, &draws, t)
            }
            Sampler::Ranked(_) => {
                let remaining = linear_remaining(phase.positions.len(), t, phase.steps);
                let count = masked.len().saturating_sub(remaining).max(1);
                let cands: Vec<Candidate> = masked
                    .iter()
                    .map(|&i| Candidate {
                        pos: i,
                        rank: ranks[i],
                        prob: scores[i].exp(),
                    })
                    .collect();
                ranked_commits(&cands, count, opts.threshold)
            }
        }
    };
    for &i in &commits {
        c.ids[i] = proposal[i];
        c.masked[i] = false;
    }
    p.step += 1;
    p.done += 1;
    let phase_done = !phase.positions.iter().any(|&i| c.masked[i]);
    if p.step >= phase.steps || (early_exit && phase_done) {
        p.phase += 1;
        p.step = 0;
    }
    on_step(&StepEvent {
        canvas: index,
        step: p.done,
        total_steps: p.total,
        input: &input,
        proposal: &proposal,
        scores: &scores,
        kept_masked,
        committed: commits.len(),
        tokens: &c.ids,
        masked: &c.masked,
    });
}
