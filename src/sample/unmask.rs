//! Unmasking rules beyond the reference (which has only top-k confidence and random keep,
//! reference-semantics §2.2): rank the still-masked positions by confidence, top-1 − top-2
//! margin, negative entropy or a random draw, and commit as many as a linear schedule asks;
//! optionally every position above a confidence threshold (parallel decoding); optionally
//! within semi-autoregressive blocks, left to right (`schedule`).
//!
//! Unlike the reference's top-k rule, committed positions do not compete here: only masked
//! positions are ranked, so exactly the scheduled count commits (more under `--threshold`).

use super::filter::log_softmax;
use super::schedule::Phase;

/// What ranks the masked positions; higher commits first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Log-probability of the chosen token.
    Confidence,
    /// Probability of the top token minus that of the runner-up.
    Margin,
    /// Negative entropy of the position's distribution.
    Entropy,
    /// A uniform draw: the order is random (MaskGIT-style ablation).
    Random,
}

impl Rule {
    /// Whether ranking needs the full distribution, beyond the chosen token's log-probability.
    pub fn needs_distribution(self) -> bool {
        matches!(self, Rule::Margin | Rule::Entropy)
    }
}

/// Margin and negative entropy of one position from its (tempered) logits.
pub fn distribution_score(rule: Rule, logits: &[f32]) -> f32 {
    let lp = log_softmax(logits);
    match rule {
        Rule::Margin => {
            let (mut p1, mut p2) = (0.0f32, 0.0f32);
            for &x in &lp {
                let p = x.exp();
                if p > p1 {
                    p2 = p1;
                    p1 = p;
                } else if p > p2 {
                    p2 = p;
                }
            }
            p1 - p2
        }
        Rule::Entropy => lp
            .iter()
            .filter(|x| x.is_finite())
            .map(|&x| x.exp() * x)
            .sum(),
        Rule::Confidence | Rule::Random => f32::NAN,
    }
}

/// Linear schedule: of `n` positions, `floor(n·t/T)` remain masked after loop step `t` of `total`.
pub fn linear_remaining(n: usize, t: usize, total: usize) -> usize {
    n * t / total.max(1)
}

/// One masked position as the ranking sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub pos: usize,
    /// Rule score; higher commits first.
    pub rank: f32,
    /// Probability of the chosen token, for `--threshold`.
    pub prob: f32,
}

/// Commits the `count` best candidates, plus (with a threshold) every candidate whose chosen
/// token has probability above it. Ties keep position order, so the result is deterministic.
pub fn ranked_commits(cands: &[Candidate], count: usize, threshold: Option<f32>) -> Vec<usize> {
    let mut order: Vec<&Candidate> = cands.iter().collect();
    order.sort_by(|a, b| b.rank.total_cmp(&a.rank).then(a.pos.cmp(&b.pos)));
    let mut out: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(k, c)| *k < count || threshold.is_some_and(|p| c.prob > p))
        .map(|(_, c)| c.pos)
        .collect();
    out.sort_unstable();
    out
}

/// One step of a ranking rule on `phase` at loop step `t` (> 0): of the still-`masked`
/// positions, as many as the linear schedule asks (at least one) by `ranks`, plus with a
/// threshold every one whose token has probability above it (`logprobs`: the chosen tokens').
pub fn step_commits(
    phase: &Phase,
    t: usize,
    masked: &[usize],
    ranks: &[f32],
    logprobs: &[f32],
    threshold: Option<f32>,
) -> Vec<usize> {
    let remaining = linear_remaining(phase.positions.len(), t, phase.steps);
    let count = masked.len().saturating_sub(remaining).max(1);
    let cands: Vec<Candidate> = masked
        .iter()
        .map(|&i| Candidate {
            pos: i,
            rank: ranks[i],
            prob: logprobs[i].exp(),
        })
        .collect();
    ranked_commits(&cands, count, threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_threshold_and_schedule() {
        let c = |pos, rank, prob| Candidate { pos, rank, prob };
        let cands = [c(2, -0.1, 0.9), c(5, -3.0, 0.05), c(7, -0.5, 0.6)];
        assert_eq!(ranked_commits(&cands, 1, None), vec![2]);
        assert_eq!(ranked_commits(&cands, 2, None), vec![2, 7]);
        assert_eq!(ranked_commits(&cands, 1, Some(0.5)), vec![2, 7]);
        assert_eq!(ranked_commits(&cands, 0, Some(0.95)), Vec::<usize>::new());
        assert_eq!(linear_remaining(12, 7, 8), 10);
        assert_eq!(linear_remaining(12, 0, 8), 0);
    }

    #[test]
    fn margin_and_entropy() {
        let m = distribution_score(Rule::Margin, &[0.0, 0.0, -100.0]);
        assert!(m.abs() < 1e-6);
        let peaked = distribution_score(Rule::Entropy, &[10.0, -10.0, -10.0]);
        let flat = distribution_score(Rule::Entropy, &[0.0, 0.0, 0.0]);
        assert!(peaked > flat && (flat + 3f32.ln()).abs() < 1e-5);
    }
}
