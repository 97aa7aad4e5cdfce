//! What a training step optimises: the ablation switches of the paper in one enum
//! (reference-semantics §1; paper Table 3), and the loss convention of the model's family.

use std::ops::Range;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::data::loader::Batch;
use crate::diffusion::anneal::{anneal_ratio, annealed_mask};
use crate::diffusion::loss::{LossConvention, LossTargets};
use crate::diffusion::noise::{kept_clean, mask_tokens, sample_mask_draws, sample_times};
use crate::diffusion::shift::Shift;
use crate::error::{Error, Result};
use crate::model::Architecture;
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
        /// The family's loss (`loss_convention`); run configs written before it had the paper's.
        #[serde(default)]
        loss: LossConvention,
    },
}

/// The loss a model of `arch` trains with: LLaDA's and Dream's own, the paper's for the models it
/// adapts (GPT-2, LLaMA).
pub fn loss_convention(arch: Architecture) -> LossConvention {
    match arch {
        Architecture::Llada => LossConvention::Llada,
        Architecture::Dream => LossConvention::Dream,
        Architecture::Gpt2 | Architecture::Llama => LossConvention::MaskedTargets,
    }
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
    /// Masked diffusion for a model of `arch`, under its family's loss. `no_shift` asks for the
    /// paper's "without shift" ablation, which a family that fixes its shift (Dream) refuses.
    pub fn diffusion(
        arch: Architecture,
        mask_id: u32,
        no_shift: bool,
        anneal_steps: u64,
    ) -> Result<Self> {
        let loss = loss_convention(arch);
        let shift = loss
            .shift(no_shift.then_some(Shift::Same))
            .map_err(|why| Error::option("no_shift", format!("does not apply: {why}")))?;
        Ok(Objective::Diffusion {
            mask_id,
            shift: shift == Shift::Next,
            anneal_steps,
            loss,
        })
    }

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
                loss,
            } => {
                let t = sample_times(b, rng);
                let draws = sample_mask_draws(b, l, rng);
                let clean: Vec<Vec<bool>> = rows
                    .clone()
                    .map(|i| kept_clean(&batch.src_mask[i], loss.keeps_first()))
                    .collect();
                let x_t: Vec<Vec<u32>> = rows
                    .clone()
                    .zip(&clean)
                    .map(|(i, clean)| {
                        mask_tokens(&batch.ids[i], &draws[i], t[i], clean, mask_id).x_t
                    })
                    .collect();
                let maskable: Vec<usize> = clean
                    .iter()
                    .map(|c| c.iter().filter(|&&k| !k).count())
                    .collect();
                let shift = Shift::from_flag(shift);
                let targets = LossTargets::diffusion(x0, &x_t, &t[rows.clone()], mask_id, shift)
                    .normalise(loss.normaliser(), &maskable);
                let ratio = anneal_ratio(step, anneal_steps);
                let candidates: usize = clean
                    .iter()
                    .map(|c| c.iter().skip(shift.first_target()).filter(|&&k| !k).count())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_trains_under_its_own_loss() {
        let llada = Objective::diffusion(Architecture::Llada, 5, false, 0).unwrap();
        let want = Objective::Diffusion {
            mask_id: 5,
            shift: false,
            anneal_steps: 0,
            loss: LossConvention::Llada,
        };
        assert_eq!(llada, want);
        let paper = Objective::diffusion(Architecture::Llama, 5, true, 0).unwrap();
        assert!(
            matches!(paper, Objective::Diffusion { shift: false, loss, .. }
            if loss == LossConvention::MaskedTargets)
        );
        let e = Objective::diffusion(Architecture::Dream, 5, true, 0).unwrap_err();
        assert!(e.to_string().contains("no_shift"), "{e}");
    }

    /// Dream's forward process never masks the first token, whatever the draws.
    #[test]
    fn dream_keeps_the_first_token_and_divides_by_the_batch() {
        let dream = Objective::diffusion(Architecture::Dream, 5, false, 0).unwrap();
        let batch = Batch {
            ids: vec![vec![9; 8]; 4],
            src_mask: vec![vec![0; 8]; 4],
            epoch: 0,
        };
        let mut rng = Rng::seed(1);
        let mut masked_elsewhere = 0;
        for step in 0..50 {
            let p = dream.prepare(&batch, step, &mut rng, &Device::Cpu).unwrap();
            assert!(p.input.iter().all(|row| row[0] == 9));
            masked_elsewhere += p.input.iter().flatten().filter(|&&x| x == 5).count();
            assert_eq!(p.targets.count(), 4);
        }
        assert!(masked_elsewhere > 0);
    }
}
