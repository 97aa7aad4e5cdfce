//! The training objective (reference-semantics §1.3–1.4). With the shift (`Shift::Next`), logits
//! at position j predict token j+1: targets are x0[:, 1:] where x_t[:, 1:] is masked, position 0
//! is never a target and the last position's logits are never used. The loss is
//! Σ (1/t_b)·CE over masked targets ÷ the number of masked targets in the whole micro-batch.
//!
//! Only the rows that carry a target are scored, so callers apply the LM head to those rows alone
//! (`LossTargets::rows`) instead of to every position; the result is the same loss.

use candle_core::{Device, Result, Tensor};

use super::shift::Shift;
use crate::ops::cross_entropy;

/// The scored positions of a micro-batch of B sequences of length L.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossTargets {
    /// Flattened [B·L] indices of the hidden rows whose logits are scored.
    pub rows: Vec<u32>,
    /// The token each of those rows must predict.
    pub targets: Vec<u32>,
    /// The weight of each row: 1/t of its sequence (1 for the AR objective).
    pub weights: Vec<f32>,
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
        let mut out = Self::default();
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
        let mut out = Self::default();
        for (b, x0) in x0.iter().enumerate() {
            out.push(b * x0.len(), Shift::Next.targets(x0, |_| true), 1.0);
        }
        out
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
    /// The optimised quantity, a scalar with its graph: Σ w·CE / n (0 when n = 0).
    pub weighted: Tensor,
    /// Σ CE / n, for logs.
    pub unweighted: f32,
    /// Number of scored targets n.
    pub n_targets: usize,
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
            n_targets: 0,
        });
    }
    let ce = cross_entropy(logits, &Tensor::new(targets.targets.as_slice(), device)?)?;
    let w = Tensor::new(targets.weights.as_slice(), device)?;
    let weighted = ((ce.clone() * w)?.sum_all()? / n as f64)?;
    let unweighted = (ce.detach().sum_all()? / n as f64)?.to_scalar::<f32>()?;
    Ok(Loss {
        weighted,
        unweighted,
        n_targets: n,
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
}
