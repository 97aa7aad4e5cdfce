//! The forward (noising) process of Algorithm 1, reference-semantics §1.1: linear schedule
//! α_t = 1 − t, one t per sequence in [1e-3, 1), each maskable token replaced by [MASK]
//! independently with probability t. Draws are arguments so fixtures can inject them.

use crate::rng::Rng;

/// The smallest time; keeps the 1/t weight finite.
pub const T_MIN: f32 = 1e-3;

/// t = (1 − 1e-3)·u + 1e-3 for a uniform draw u ∈ [0, 1).
pub fn time_from_uniform(u: f32) -> f32 {
    (1.0 - T_MIN) * u + T_MIN
}

/// One time per sequence.
pub fn sample_times(batch: usize, rng: &mut Rng) -> Vec<f32> {
    (0..batch)
        .map(|_| time_from_uniform(rng.uniform_f32()))
        .collect()
}

/// One uniform draw per position (row-major), compared against t in `mask_tokens`.
pub fn sample_mask_draws(batch: usize, len: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
    (0..batch)
        .map(|_| (0..len).map(|_| rng.uniform_f32()).collect())
        .collect()
}

/// A noised sequence and which of its positions are masked.
#[derive(Debug, Clone, PartialEq)]
pub struct Noised {
    pub x_t: Vec<u32>,
    /// True where the forward process replaced the token. Tracked explicitly rather than as
    /// `x_t == mask_id`, though the loss follows the reference and uses the latter (see loss.rs).
    pub masked: Vec<bool>,
}

/// The positions the forward process leaves clean: the prompt's (`src_mask` 1), and position 0
/// where the family keeps the first token (Dream: it is never masked in its training or
/// evaluation, and its prompts always hold it).
pub fn kept_clean(src_mask: &[u8], keep_first: bool) -> Vec<bool> {
    src_mask
        .iter()
        .enumerate()
        .map(|(i, &s)| s != 0 || (keep_first && i == 0))
        .collect()
}

/// x_t = where(draw < t AND not src, mask_id, x0). Position 0 can be masked too.
pub fn mask_tokens(x0: &[u32], draws: &[f32], t: f32, src_mask: &[bool], mask_id: u32) -> Noised {
    let masked: Vec<bool> = (0..x0.len())
        .map(|i| draws[i] < t && !src_mask.get(i).copied().unwrap_or(false))
        .collect();
    let x_t = x0
        .iter()
        .zip(&masked)
        .map(|(&x, &m)| if m { mask_id } else { x })
        .collect();
    Noised { x_t, masked }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_lie_in_range_and_prompt_is_never_masked() {
        let mut rng = Rng::seed(0);
        assert!(sample_times(1000, &mut rng)
            .iter()
            .all(|t| (T_MIN..1.0).contains(t)));
        let n = mask_tokens(
            &[5, 6, 8, 9],
            &[0.0, 0.0, 0.9, 0.1],
            0.5,
            &[false, true, false, false],
            7,
        );
        assert_eq!(n.x_t, vec![7, 6, 8, 7]);
        assert_eq!(n.masked, vec![true, false, false, true]);
        assert_eq!(kept_clean(&[0, 1, 0], false), vec![false, true, false]);
        assert_eq!(kept_clean(&[0, 1, 0], true), vec![true, true, false]);
    }
}
