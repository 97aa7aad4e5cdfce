//! Attention-mask annealing (reference-semantics §1.5): training moves from causal to full
//! attention by letting each upper-triangle entry through with probability `ratio`.

use candle_core::Device;

use crate::ops::AttentionMask;
use crate::rng::Rng;

/// ratio = min(1, (step + 1) / anneal_steps), step counting optimizer steps from 0;
/// `anneal_steps == 0` means bidirectional from the start.
pub fn anneal_ratio(step: u64, anneal_steps: u64) -> f64 {
    if anneal_steps == 0 {
        return 1.0;
    }
    ((step + 1) as f64 / anneal_steps as f64).min(1.0)
}

/// allowed[i, j] = (j ≤ i) OR Bernoulli(ratio), one L×L matrix shared by the batch, drawn anew
/// for every forward. Entries are drawn row-major for all i, j (lower-triangle draws are unused
/// but consumed, so the stream does not depend on which entries matter).
pub fn annealed_allowed(ratio: f64, l: usize, rng: &mut Rng) -> Vec<bool> {
    let mut allowed = Vec::with_capacity(l * l);
    for i in 0..l {
        for j in 0..l {
            let draw = rng.uniform_f64() < ratio;
            allowed.push(j <= i || draw);
        }
    }
    allowed
}

/// The mask for one forward at annealing ratio `ratio`: causal at 0, bidirectional at 1.
pub fn annealed_mask(
    ratio: f64,
    l: usize,
    rng: &mut Rng,
    device: &Device,
) -> candle_core::Result<AttentionMask> {
    if ratio >= 1.0 {
        return Ok(AttentionMask::Bidirectional);
    }
    if ratio <= 0.0 {
        return Ok(AttentionMask::Causal);
    }
    AttentionMask::from_allowed(&annealed_allowed(ratio, l, rng), l, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_schedule() {
        assert_eq!(anneal_ratio(0, 0), 1.0);
        assert_eq!(anneal_ratio(0, 10), 0.1);
        assert_eq!(anneal_ratio(9, 10), 1.0);
        assert_eq!(anneal_ratio(500, 10), 1.0);
    }

    #[test]
    fn lower_triangle_always_allowed_and_upper_at_ratio() {
        let mut rng = Rng::seed(3);
        let l = 200;
        let a = annealed_allowed(0.3, l, &mut rng);
        let mut upper = 0usize;
        for i in 0..l {
            for j in 0..l {
                if j <= i {
                    assert!(a[i * l + j]);
                } else if a[i * l + j] {
                    upper += 1;
                }
            }
        }
        let frac = upper as f64 / (l * (l - 1) / 2) as f64;
        assert!((frac - 0.3).abs() < 0.02, "upper fraction {frac}");
    }
}
