//! Algorithm 2 (paper §3, reference-semantics §2.1): the denoising loop shared by every diffusion
//! sampler. Each step runs one bidirectional forward over a batch of canvases, proposes a token
//! for every undecided position, then a commit rule (`topk_confidence`, `random_keep`, `unmask`,
//! or a family's own sampler, `llada` and `dream`) decides which proposals become final.
//!
//! Reference semantics kept here:
//! * Shift at inference (`Shift::proposal_row`): position i takes its token from logits row
//!   i − 1; position 0 keeps the input token (`Canvas::first`) and takes row 0's score, as the
//!   reference shifts the scores. (LLaDA: row i, `Shift::Same`; Dream: position 0 takes row 0's
//!   token too, `Shift::Concat`.)
//! * Fixed and committed positions are frozen; their proposals are their current tokens.
//! * T forwards in total; after the last one every remaining masked position commits (the
//!   families' samplers: their own schedules decide every step, the last included).
//! * Each step's proposals are fresh; nothing uncommitted carries over.
//! * LLaDA's guidance runs the unconditional canvases in the same forward, after the others.
//!
//! `HeadRows::All` is the exact path: the LM head runs on every row and a token is drawn at every
//! position, as the reference does. `HeadRows::Needed` runs the head only on the rows whose
//! proposal can matter and stops a canvas once nothing is masked; with the same draws it yields the
//! same canvases (argmax: identical; sampling: the per-row seeds differ, so a different sample).

use candle_core::{Device, Tensor};

use super::canvas::Canvas;
use super::events::{OnStep, StepEvent};
use super::head_rows::{head_rows, HeadOutput, HeadRows, ProposalRow};
use super::kv_reuse::{CacheMode, StepCache};
use super::options::{DiffusionOptions, Sampler};
use super::proposal::{propose_rows, Pick};
use super::schedule::Progress;
use super::{dream, llada, random_keep, topk_confidence, unmask};
use crate::error::{Error, Result};
use crate::model::LanguageModel;
use crate::ops::team::with_team_if_small;
use crate::ops::AttentionMask;
use crate::rng::Rng;

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

/// What the loop runs with: the model, the device its inputs go to, and the options.
#[derive(Clone, Copy)]
pub struct Denoiser<'a> {
    pub model: &'a dyn LanguageModel,
    pub device: &'a Device,
    pub opts: &'a DiffusionOptions,
}

impl Denoiser<'_> {
    /// Runs the loop on `canvases` (one length), in place: on return every position is decided.
    /// `on_step` sees every step of every canvas.
    ///
    /// # Shapes
    /// One forward takes ids [B, L] (B = canvases still running) and the head sees [R, D] rows.
    pub fn sample(
        &self,
        canvases: &mut [Canvas],
        rng: &mut Rng,
        on_step: &mut OnStep,
    ) -> Result<SampleReport> {
        self.sample_until(canvases, rng, on_step, &|_| false)
    }

    /// `sample`, with a way out: before each forward, every running canvas `b` with `stop(b)`
    /// leaves the batch as it is (still partly masked) while the others carry on. A server stops
    /// the canvases of clients that went away or ran out of time.
    pub fn sample_until(
        &self,
        canvases: &mut [Canvas],
        rng: &mut Rng,
        on_step: &mut OnStep,
        stop: &dyn Fn(usize) -> bool,
    ) -> Result<SampleReport> {
        let opts = self.opts;
        opts.validate()?;
        let mut report = SampleReport {
            steps: vec![0; canvases.len()],
            ..Default::default()
        };
        if canvases.is_empty() {
            return Ok(report);
        }
        check_canvases(self.model, canvases)?;
        if let Sampler::Llada(l) = opts.sampler {
            l.eos.check_vocab(self.model.config().vocab_size)?;
        }
        let l = canvases[0].len();
        let mut progress = canvases
            .iter()
            .map(|c| Ok(Progress::new(opts.phases(&c.generated())?)))
            .collect::<Result<Vec<_>>>()?;
        let proposer = opts.proposer();
        let guidance = match opts.sampler {
            Sampler::Llada(l) => l.guidance(),
            _ => None,
        };
        // Greedy choice ranked by its own probability needs no logits beyond each row's maximum
        // and normaliser, which the head computes without writing the logits.
        let greedy = proposer.greedy_rows_suffice() && guidance.is_none();
        let mut cache = None;

        loop {
            for (b, p) in progress.iter_mut().enumerate() {
                if p.running() && stop(b) {
                    p.stop();
                }
            }
            let active: Vec<usize> = (0..canvases.len())
                .filter(|&b| progress[b].running())
                .collect();
            if active.is_empty() {
                return Ok(report);
            }
            let mut ids: Vec<u32> = active
                .iter()
                .flat_map(|&b| canvases[b].ids.clone())
                .collect();
            // Guidance: the same canvases with every given position masked, in the same forward.
            if guidance.is_some() {
                for &b in &active {
                    let c = &canvases[b];
                    ids.extend(llada::unconditional(&c.ids, &c.fixed, c.mask_id));
                }
            }
            let rows = ids.len() / l;
            let ids = Tensor::from_vec(ids, (rows, l), self.device)?;
            let spans: Vec<(usize, usize)> = active.iter().map(|&b| progress[b].span(l)).collect();
            let (hidden, offset) = self.hidden(&ids, &active, &spans, &mut cache)?;
            let window = hidden.dim(1)?;
            report.forwards += 1;

            // The cached positions outside the window are not proposed: left of it they are
            // decided, right of it they belong to later blocks.
            let wanted: Vec<ProposalRow> = active
                .iter()
                .enumerate()
                .flat_map(|(a, &b)| {
                    let rows = offset..offset + window;
                    self.wanted(&canvases[b], &progress[b])
                        .into_iter()
                        .map(move |i| (i, self.opts.shift.proposal_row(i)))
                        .filter(move |(_, row)| rows.contains(row))
                        .map(move |(position, row)| ProposalRow {
                            canvas: a,
                            position,
                            row: a * window + row - offset,
                        })
                })
                .collect();
            let seeds: Vec<u64> = wanted.iter().map(|_| rng.next_u64()).collect();
            let picks: Vec<Pick> = if wanted.is_empty() {
                vec![]
            } else {
                let head = with_team_if_small(self.device, wanted.len(), || {
                    self.head(&hidden, &wanted, greedy, guidance, &mut report)
                })?;
                propose_rows(&head, &wanted, &seeds, proposer)?
            };

            let mut by_canvas: Vec<Vec<(usize, Pick)>> = active.iter().map(|_| vec![]).collect();
            for (w, p) in wanted.iter().zip(picks) {
                by_canvas[w.canvas].push((w.position, p));
            }
            for (a, &b) in active.iter().enumerate() {
                let picks = std::mem::take(&mut by_canvas[a]);
                self.step_canvas(b, &mut canvases[b], &mut progress[b], picks, rng, on_step)?;
                report.steps[b] += 1;
            }
        }
    }

    /// One forward of the running canvases `ids` [B, L]: the hidden states of positions
    /// `offset..offset + window` (all of them without a cache) and `offset`. `spans` are the
    /// canvases' current blocks, which bound the window a cache recomputes.
    fn hidden(
        &self,
        ids: &Tensor,
        active: &[usize],
        spans: &[(usize, usize)],
        cache: &mut Option<StepCache>,
    ) -> Result<(Tensor, usize)> {
        let model = self.model;
        if self.opts.cache == CacheMode::None {
            return Ok((model.hidden(ids, &AttentionMask::Bidirectional, None)?, 0));
        }
        let l = ids.dim(1)?;
        // The first undecided position reads the row the shift gives it, which may lie before it.
        let first = spans.iter().map(|s| s.0).min().unwrap_or(0);
        let start = self.opts.shift.proposal_row(first);
        let end = match self.opts.cache {
            CacheMode::Dual => spans.iter().map(|s| s.1).max().unwrap_or(l),
            _ => l,
        };
        Ok(StepCache::forward(cache, model, ids, active, (start, end))?)
    }

    /// The LM head on the rows `wanted` reads. Under guidance `hidden` holds the conditional
    /// canvases, then the unconditional ones, and the head's logits are guided.
    fn head(
        &self,
        hidden: &Tensor,
        wanted: &[ProposalRow],
        greedy: bool,
        guidance: Option<f32>,
        report: &mut SampleReport,
    ) -> Result<HeadOutput> {
        let mode = self.opts.head_rows;
        let Some(scale) = guidance else {
            let head = head_rows(self.model, hidden, wanted, mode, greedy)?;
            report.head_rows += head.row_count()?;
            return Ok(head);
        };
        let b = hidden.dim(0)? / 2;
        let cond = head_rows(self.model, &hidden.narrow(0, 0, b)?, wanted, mode, false)?;
        let un = head_rows(self.model, &hidden.narrow(0, b, b)?, wanted, mode, false)?;
        report.head_rows += cond.row_count()? + un.row_count()?;
        cond.combine(&un, |c, u| llada::guide(c, u, scale))
    }

    /// Positions whose proposal is computed this step.
    fn wanted(&self, c: &Canvas, p: &Progress) -> Vec<usize> {
        match (self.opts.head_rows, p.phase()) {
            (HeadRows::All, _) => (0..c.len()).collect(),
            (HeadRows::Needed, None) => vec![],
            // Committed positions compete in the top-k ranking (quirk), so they need scores too.
            (HeadRows::Needed, Some(ph)) if self.opts.sampler == Sampler::TopkConfidence => {
                ph.positions.clone()
            }
            (HeadRows::Needed, Some(_)) if matches!(self.opts.sampler, Sampler::Llada(_)) => {
                llada::candidates(&c.masked, p.span(c.len()).1)
            }
            (HeadRows::Needed, Some(ph)) => ph
                .positions
                .iter()
                .copied()
                .filter(|&i| c.masked[i])
                .collect(),
        }
    }

    /// Whether a phase ends as soon as nothing in it is masked. The reference samplers run all T
    /// forwards even then; only the needed-rows path (whose output is the same) and the ranking
    /// rules stop early.
    fn early_exit(&self) -> bool {
        self.opts.head_rows == HeadRows::Needed || matches!(self.opts.sampler, Sampler::Ranked(_))
    }

    /// Applies one step's proposals to canvas `index`: commit, advance the schedule, report.
    fn step_canvas(
        &self,
        index: usize,
        c: &mut Canvas,
        p: &mut Progress,
        picks: Vec<(usize, Pick)>,
        rng: &mut Rng,
        on_step: &mut OnStep,
    ) -> Result<()> {
        let opts = self.opts;
        let input = c.ids.clone();
        let mut x0 = c.ids.clone();
        let mut proposal = c.ids.clone();
        let mut scores = vec![f32::NAN; c.len()];
        let mut ranks = vec![f32::NAN; c.len()];
        for (i, pk) in picks {
            scores[i] = pk.logprob;
            ranks[i] = pk.rank;
            x0[i] = if opts.shift.proposes(i) {
                pk.token
            } else {
                c.first
            };
            if c.masked[i] {
                proposal[i] = x0[i];
            }
        }
        let t = p.t();
        let phase = p
            .phase()
            .ok_or_else(|| Error::Internal(format!("canvas {index} was stepped after its end")))?;
        let masked: Vec<usize> = phase
            .positions
            .iter()
            .copied()
            .filter(|&i| c.masked[i])
            .collect();
        let mut kept_masked = None;
        let step = p.step_in_phase();
        let commits = match opts.sampler {
            // The families' own schedules decide their last step too.
            Sampler::Llada(_) => {
                let candidates = llada::candidates(&c.masked, p.span(c.len()).1);
                llada::step_commits(phase, step, &candidates, &ranks)
            }
            Sampler::Dream(d) => {
                let ts = dream::timesteps(phase.steps, d.eps);
                dream::step_commits(&d, step, &ts, &masked, &ranks, rng)
            }
            _ if t == 0 => masked,
            Sampler::TopkConfidence => {
                let (keep, commits) = topk_confidence::step_commits(phase, t, &scores, &c.masked);
                kept_masked = Some(keep);
                commits
            }
            Sampler::RandomKeep => random_keep::step_commits(&masked, t, rng),
            Sampler::Ranked(_) => {
                unmask::step_commits(phase, t, &masked, &ranks, &scores, opts.threshold)
            }
        };
        // The families' masked state is `x == mask_id`: a committed mask id stays masked.
        let by_id = opts.sampler.is_family();
        for &i in &commits {
            c.ids[i] = proposal[i];
            c.masked[i] = by_id && proposal[i] == c.mask_id;
        }
        let phase_done = !phase.positions.iter().any(|&i| c.masked[i]);
        p.advance(phase_done, self.early_exit());
        on_step(&StepEvent {
            canvas: index,
            step: p.done,
            total_steps: p.total,
            input: &input,
            proposal: &proposal,
            x0: &x0,
            scores: &scores,
            ranks: &ranks,
            kept_masked,
            committed: commits.len(),
            tokens: &c.ids,
            masked: &c.masked,
        });
        Ok(())
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
