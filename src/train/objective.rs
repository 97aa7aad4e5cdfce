//! What a training step optimises: the ablation switches of the paper in one enum
//! (reference-semantics §1; paper Table 3).

use std::ops::Range;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::data::loader::Batch;
use crate::diffusion::anneal::{anneal_ratio, annealed_mask};
use crate::diffusion::loss::LossTargets;
use crate::diffusion::noise::{mask_tokens, sample_mask_draws, sample_times};
use crate::diffusion::shift::Shift;
use crate::error::{Error, Result};
use crate::named::{display_and_from_str, Named};
use crate::ops::AttentionMask;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Objective {
    /// Next-token cross-entropy with causal attention.
    Ar,
    /// Algorithm 1: masked diffusion with the 1/t-weighted loss.
    Diffusion {
        mask_id: u32,
        /// Logits at i predict token i+1 (off: the "without shift" ablation); `Shift::from_flag`.
        shift: bool,
        /// Steps of causal → bidirectional annealing; 0 = bidirectional from the start.
        anneal_steps: u64,
    },
}

/// A batch made ready for the model: the input ids, the scored targets and the attention.
pub struct Prepared {
    pub input: Vec<Vec<u32>>,
    pub targets: LossTargets,
    pub mask: AttentionMask,
    /// The annealing ratio used (1 = bidirectional), for logs.
    pub anneal_ratio: f64,
    /// Number of positions that could carry a target (for per-token bounds).
    pub candidate_targets: usize,
}

impl Objective {
    /// Noises a batch (diffusion) or passes it through (AR). All draws come from `rng` in a fixed
    /// order — times, mask draws, then the annealing matrix — so a resumed run draws the same.
    pub fn prepare(
        &self,
        batch: &Batch,
        step: u64,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Prepared> {
        self.prepare_rows(batch, 0..batch.ids.len(), step, rng, device)
    }

    /// Like `prepare`, but keeps only the sequences `rows` of the batch: the share of one rank in
    /// data-parallel training. The draws are made for the whole batch, so every rank consumes
    /// the same random stream and each row gets the noise it would get in a one-rank run.
    pub fn prepare_rows(
        &self,
        batch: &Batch,
        rows: Range<usize>,
        step: u64,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Prepared> {
        let b = batch.ids.len();
        let l = batch.ids.first().map_or(0, |r| r.len());
        let x0 = batch
            .ids
            .get(rows.clone())
            .ok_or_else(|| Error::Input(format!("rows {rows:?} of a batch of {b} sequences")))?;
        match *self {
            Objective::Ar => Ok(Prepared {
                input: x0.to_vec(),
                targets: LossTargets::autoregressive(x0),
                mask: AttentionMask::Causal,
                anneal_ratio: 0.0,
                candidate_targets: rows.len() * l.saturating_sub(1),
            }),
            Objective::Diffusion {
                mask_id,
                shift,
                anneal_steps,
            } => {
                let t = sample_times(b, rng);
                let draws = sample_mask_draws(b, l, rng);
                let x_t: Vec<Vec<u32>> = rows
                    .clone()
                    .map(|i| {
                        let src: Vec<bool> = batch.src_mask[i].iter().map(|&s| s != 0).collect();
                        mask_tokens(&batch.ids[i], &draws[i], t[i], &src, mask_id).x_t
                    })
                    .collect();
                let shift = Shift::from_flag(shift);
                let targets = LossTargets::diffusion(x0, &x_t, &t[rows.clone()], mask_id, shift);
                let ratio = anneal_ratio(step, anneal_steps);
                let candidates: usize = batch.src_mask[rows]
                    .iter()
                    .map(|m| {
                        m.iter()
                            .skip(shift.first_target())
                            .filter(|&&s| s == 0)
                            .count()
                    })
                    .sum();
                Ok(Prepared {
                    input: x_t,
                    targets,
                    mask: annealed_mask(ratio, l, rng, device)?,
                    anneal_ratio: ratio,
                    candidate_targets: candidates,
                })
            }
        }
    }
}

/// The objective's family as a command names it (`ar` or `diffusion`), before the diffusion
/// switches are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectiveKind {
    Ar,
    Diffusion,
}

impl Named for ObjectiveKind {
    const WHAT: &'static str = "objective";
    const ALL: &'static [Self] = &[Self::Ar, Self::Diffusion];

    fn name(self) -> &'static str {
        match self {
            Self::Ar => "ar",
            Self::Diffusion => "diffusion",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::Ar => "Next-token prediction under causal attention",
            Self::Diffusion => "Masked diffusion (Algorithm 1): 1/t-weighted loss on masked tokens",
        }
    }
}
display_and_from_str!(ObjectiveKind);
