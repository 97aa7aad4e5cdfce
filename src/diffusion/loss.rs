//! The training objective (reference-semantics §1.3–1.4). With the shift (`Shift::Next`), logits
//! at position j predict token j+1: targets are x0[:, 1:] where x_t[:, 1:] is masked, position 0
//! is never a target and the last position's logits are never used. The loss is
//! Σ (1/t_b)·CE over masked targets ÷ the number of masked targets in the whole micro-batch.
//!
//! LLaDA and Dream train the same masked-token cross-entropy under their own conventions
//! (`LossConvention`): which row scores a token, whether position 0 may be masked, and what the
//! weighted sum is divided by. Their 1/p_mask weight is this 1/t: their masking probability
//! p_mask = (1 − 1e-3)·u + 1e-3 is the t that `noise::time_from_uniform` draws.
//!
//! Only the rows that carry a target are scored, so callers apply the LM head to those rows alone
//! (`LossTargets::rows`) instead of to every position; the result is the same loss.

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::shift::Shift;
use crate::named::{display_and_from_str, Named};
use crate::ops::cross_entropy;

/// A family's masked-diffusion loss: Σ (1/t)·CE over the masked targets, divided as the family
/// divides it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossConvention {
    /// The paper's (DiffuGPT, DiffuLLaMA): ÷ the masked targets of the micro-batch; shifted or
    /// not as the objective chooses (the "without shift" ablation).
    #[default]
    MaskedTargets,
    /// LLaDA's GUIDELINES: no shift; each sequence ÷ its maskable (non-prompt) length, then ÷ B.
    /// That is ÷ B·L in pre-training and the per-row answer length in SFT, one rule for both.
    Llada,
    /// Dream's (its released evaluation NLL): shifted as `cat(logits[:, :1], logits[:, :-1])`,
    /// which for targets is `Next` because position 0 is never masked; ÷ B.
    Dream,
}

/// What the weighted cross-entropy sum is divided by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Normaliser {
    /// The number of masked targets in the micro-batch.
    #[default]
    MaskedTargets,
    /// Each sequence's maskable length, then the number of sequences.
    MaskableLength,
    /// The number of sequences.
    Batch,
}

impl LossConvention {
    /// The shift the family fixes; None where it is the objective's choice.
    pub fn fixed_shift(self) -> Option<Shift> {
        match self {
            Self::MaskedTargets => None,
            Self::Llada => Some(Shift::Same),
            Self::Dream => Some(Shift::Next),
        }
    }

    /// The shift to train with given a requested one (None: the default, shifted for the
    /// paper's objective). A family's own shift cannot be changed: its checkpoints were trained
    /// with it.
    pub fn shift(self, requested: Option<Shift>) -> std::result::Result<Shift, String> {
        match (self.fixed_shift(), requested) {
            (None, r) => Ok(r.unwrap_or(Shift::Next)),
            (Some(fixed), None) => Ok(fixed),
            (Some(fixed), Some(r)) if r == fixed => Ok(fixed),
            (Some(fixed), Some(_)) => Err(format!(
                "the {self} loss fixes the shift ({fixed:?}); it cannot be changed"
            )),
        }
    }

    /// Whether the forward process never masks position 0 (Dream keeps the first token).
    pub fn keeps_first(self) -> bool {
        self == Self::Dream
    }

    pub fn normaliser(self) -> Normaliser {
        match self {
            Self::MaskedTargets => Normaliser::MaskedTargets,
            Self::Llada => Normaliser::MaskableLength,
            Self::Dream => Normaliser::Batch,
        }
    }
}

impl Named for LossConvention {
    const WHAT: &'static str = "loss convention";
    const ALL: &'static [Self] = &[Self::MaskedTargets, Self::Llada, Self::Dream];

    fn name(self) -> &'static str {
        match self {
            Self::MaskedTargets => "masked-targets",
            Self::Llada => "llada",
            Self::Dream => "dream",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::MaskedTargets => "The paper's: 1/t-weighted CE ÷ the batch's masked targets",
            Self::Llada => "LLaDA's: no shift, each row ÷ its maskable length, then ÷ B",
            Self::Dream => "Dream's: shifted, first token never masked, ÷ B",
        }
    }
}
display_and_from_str!(LossConvention);

/// The scored positions of a micro-batch of B sequences of length L.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossTargets {
    /// Flattened [B·L] indices of the hidden rows whose logits are scored.
    pub rows: Vec<u32>,
    /// The token each of those rows must predict.
    pub targets: Vec<u32>,
    /// The weight of each row: 1/t of its sequence (1 for the AR objective).
    pub weights: Vec<f32>,
    /// How Σ weight·CE is divided: by the targets' count unless `normalise` says otherwise.
    pub normaliser: Normaliser,
    /// Each sequence's maskable length (set by `normalise`).
    pub maskable: Vec<usize>,
    /// L, the length of the sequences the rows index.
    pub seq_len: usize,
}

impl LossTargets {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Diffusion targets: each masked position that `shift` gives a row. The loss mask is
    /// `x_t == mask_id`, as in the reference: a genuine occurrence of a reused mask id in the
    /// data also counts as masked (a reference quirk, kept on purpose).
    pub fn diffusion(
        x0: &[Vec<u32>],
        x_t: &[Vec<u32>],
        t: &[f32],
        mask_id: u32,
        shift: Shift,
    ) -> Self {
        let mut out = Self::starting(x0);
        for (b, (x0, x_t)) in x0.iter().zip(x_t).enumerate() {
            out.push(
                b * x0.len(),
                shift.targets(x0, |j| x_t[j] == mask_id),
                1.0 / t[b],
            );
        }
        out
    }

    /// Next-token (AR) targets: every position j < L−1 predicts j+1, weight 1.
    pub fn autoregressive(x0: &[Vec<u32>]) -> Self {
        let mut out = Self::starting(x0);
        for (b, x0) in x0.iter().enumerate() {
            out.push(b * x0.len(), Shift::Next.targets(x0, |_| true), 1.0);
        }
        out
    }

    fn starting(x0: &[Vec<u32>]) -> Self {
        Self {
            seq_len: x0.first().map_or(0, Vec::len),
            ..Self::default()
        }
    }

    /// The same targets divided as `normaliser` divides them; `maskable[b]` is sequence b's
    /// maskable length (the positions the forward process may mask).
    pub fn normalise(mut self, normaliser: Normaliser, maskable: &[usize]) -> Self {
        self.normaliser = normaliser;
        self.maskable = maskable.to_vec();
        self
    }

    /// The count the loss is divided by last: the targets', or the sequences' (B). Ranks split a
    /// global micro-batch's loss in proportion to it.
    pub fn count(&self) -> usize {
        match self.normaliser {
            Normaliser::MaskedTargets => self.len(),
            Normaliser::Batch | Normaliser::MaskableLength => self.maskable.len(),
        }
    }

    /// What target k's weighted CE is divided by before the division by `count`: its
    /// sequence's maskable length for LLaDA's rule, else 1.
    fn row_divisor(&self, k: usize) -> f32 {
        match self.normaliser {
            // A sequence with a target has at least that position maskable.
            Normaliser::MaskableLength => {
                self.maskable[self.rows[k] as usize / self.seq_len] as f32
            }
            Normaliser::MaskedTargets | Normaliser::Batch => 1.0,
        }
    }

    /// Appends one sequence's (row, token) pairs, its rows starting at flat row `first_row`.
    fn push(&mut self, first_row: usize, targets: impl Iterator<Item = (usize, u32)>, weight: f32) {
        for (row, target) in targets {
            self.rows.push((first_row + row) as u32);
            self.targets.push(target);
            self.weights.push(weight);
        }
    }

    pub fn rows_tensor(&self, device: &Device) -> Result<Tensor> {
        Tensor::new(self.rows.as_slice(), device)
    }
}

#[derive(Debug, Clone)]
pub struct Loss {
    /// The optimised quantity, a scalar with its graph: Σ w·CE divided as the targets'
    /// `normaliser` says (0 when n = 0).
    pub weighted: Tensor,
    /// Σ CE / n, for logs.
    pub unweighted: f32,
    /// Σ w·CE, undivided: the micro-batch's part of the diffusion bound, for validation.
    pub bound_sum: f32,
    /// Number of scored targets n.
    pub n_targets: usize,
    /// The count the loss was divided by last (`LossTargets::count`).
    pub normaliser: usize,
}

/// logits: [n, V] for the rows of `targets`, in order.
pub fn masked_loss(logits: &Tensor, targets: &LossTargets) -> Result<Loss> {
    let device = logits.device();
    let n = targets.len();
    if n == 0 {
        // Nothing masked (possible for small t and short sequences): a zero loss that still
        // belongs to the graph, where the reference would divide by zero. f32 like the loss of
        // any other micro-batch, whatever the logits' dtype.
        return Ok(Loss {
            weighted: (logits.sum_all()?.to_dtype(candle_core::DType::F32)? * 0.0)?,
            unweighted: 0.0,
            bound_sum: 0.0,
            n_targets: 0,
            normaliser: targets.count(),
        });
    }
    let ce = cross_entropy(logits, &Tensor::new(targets.targets.as_slice(), device)?)?;
    let w = Tensor::new(targets.weights.as_slice(), device)?;
    // w / 1 is w exactly: the paper's loss is computed as it always was.
    let factors: Vec<f32> = (0..n)
        .map(|k| targets.weights[k] / targets.row_divisor(k))
        .collect();
    let factors = Tensor::new(factors.as_slice(), device)?;
    let weighted = ((ce.clone() * factors)?.sum_all()? / targets.count() as f64)?;
    let unweighted = (ce.detach().sum_all()? / n as f64)?.to_scalar::<f32>()?;
    let bound_sum = (ce.detach() * w)?.sum_all()?.to_scalar::<f32>()?;
    Ok(Loss {
        weighted,
        unweighted,
        bound_sum,
        n_targets: n,
        normaliser: targets.count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_alignment() {
        let x0 = vec![vec![10, 11, 12, 13]];
        let x_t = vec![vec![7, 11, 7, 7]];
        let s = LossTargets::diffusion(&x0, &x_t, &[0.5], 7, Shift::Next);
        // position 0 is masked but is never a target; 2 and 3 are predicted by rows 1 and 2
        assert_eq!(s.rows, vec![1, 2]);
        assert_eq!(s.targets, vec![12, 13]);
        assert_eq!(s.weights, vec![2.0, 2.0]);
        let n = LossTargets::diffusion(&x0, &x_t, &[0.5], 7, Shift::Same);
        assert_eq!(n.rows, vec![0, 2, 3]);
        assert_eq!(n.targets, vec![10, 12, 13]);
        let ar = LossTargets::autoregressive(&x0);
        assert_eq!((ar.rows, ar.targets), (vec![0, 1, 2], vec![11, 12, 13]));
    }

    /// Each convention on one hand-worked batch: uniform logits over V = 32 make every CE ln 32,
    /// so a loss is (Σ weights / normaliser)·ln 32.
    #[test]
    fn family_conventions_weigh_and_divide_as_their_papers() {
        let x0 = vec![vec![10, 11, 12, 13], vec![20, 21, 22, 23]];
        let t = [0.5, 0.25];
        // Row 0: prompt at 0, masked 1 and 3 (maskable length 3). Row 1: masked 0 and 2.
        let x_t = vec![vec![10, 7, 12, 7], vec![7, 21, 7, 23]];
        let maskable = [3, 4];
        let ln_v = 32f64.ln();
        let loss_of = |targets: &LossTargets| {
            let logits = Tensor::zeros((targets.len(), 32), candle_core::DType::F32, &Device::Cpu);
            let loss = masked_loss(&logits.unwrap(), targets).unwrap();
            (
                loss.weighted.to_scalar::<f32>().unwrap() as f64,
                loss.normaliser,
            )
        };
        let targets = |convention: LossConvention| {
            let shift = convention.shift(None).unwrap();
            LossTargets::diffusion(&x0, &x_t, &t, 7, shift)
                .normalise(convention.normaliser(), &maskable)
        };
        // The paper, shifted: row 1's position 0 is masked but no row predicts it, so 3 targets
        // weighted 1/t = 2, 2, 4, ÷ 3.
        let paper = targets(LossConvention::MaskedTargets);
        assert_eq!(
            (paper.rows.clone(), paper.weights.clone()),
            (vec![0, 2, 5], vec![2.0, 2.0, 4.0])
        );
        let (loss, n) = loss_of(&paper);
        assert_eq!(n, 3);
        assert!((loss - 8.0 / 3.0 * ln_v).abs() < 1e-5);
        // LLaDA: no shift, so row 1's position 0 is a target; row 0 ÷ 3, row 1 ÷ 4, then ÷ B = 2.
        let llada = targets(LossConvention::Llada);
        assert_eq!(llada.rows, vec![1, 3, 4, 6]);
        assert_eq!(llada.weights, vec![2.0, 2.0, 4.0, 4.0]);
        let (loss, n) = loss_of(&llada);
        assert_eq!(n, 2);
        assert!((loss - (4.0 / 3.0 + 2.0) / 2.0 * ln_v).abs() < 1e-5);
        // Dream: shifted targets, ÷ B: (2 + 2 + 4) / 2.
        let dream = targets(LossConvention::Dream);
        assert_eq!(dream.rows, paper.rows);
        let (loss, n) = loss_of(&dream);
        assert_eq!(n, 2);
        assert!((loss - 4.0 * ln_v).abs() < 1e-5);
    }

    #[test]
    fn a_family_shift_cannot_be_changed() {
        let c = LossConvention::MaskedTargets;
        assert_eq!(c.shift(None), Ok(Shift::Next));
        assert_eq!(c.shift(Some(Shift::Same)), Ok(Shift::Same));
        assert_eq!(
            LossConvention::Llada.shift(Some(Shift::Same)),
            Ok(Shift::Same)
        );
        assert!(LossConvention::Dream.shift(Some(Shift::Same)).is_err());
        assert!(LossConvention::Dream.keeps_first() && !LossConvention::Llada.keeps_first());
        assert_eq!(
            "llada".parse::<LossConvention>().unwrap(),
            LossConvention::Llada
        );
    }
}
