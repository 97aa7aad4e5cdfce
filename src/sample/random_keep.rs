//! The reference's random-keep commit rule (`model.py::generate_samples`, the README quick-start;
//! reference-semantics §2.2): at loop step t each still-masked position commits independently
//! with probability 1/(t+1), the exact absorbing reverse step (α_s − α_t)/(1 − α_t) for s = t − 1.

use crate::rng::Rng;

/// One step of the rule at loop step `t` (> 0): one draw per still-`masked` position, in order.
pub fn step_commits(masked: &[usize], t: usize, rng: &mut Rng) -> Vec<usize> {
    let draws: Vec<f64> = masked.iter().map(|_| rng.uniform_f64()).collect();
    commits(masked, &draws, t)
}

/// The positions of `candidates` that commit, given one uniform draw in [0, 1) per candidate.
/// Draws are taken by the caller (style §6.6) so tests can inject them.
pub fn commits(candidates: &[usize], draws: &[f64], t: usize) -> Vec<usize> {
    let p = 1.0 / (t as f64 + 1.0);
    candidates
        .iter()
        .zip(draws)
        .filter(|(_, &u)| u < p)
        .map(|(&i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_is_one_over_t_plus_one() {
        assert_eq!(commits(&[3, 4, 5], &[0.2, 0.4, 0.9], 2), vec![3]);
        // t = 0 would commit everything; the loop commits all remaining there anyway.
        assert_eq!(commits(&[1, 2], &[0.99, 0.5], 0), vec![1, 2]);
    }
}
