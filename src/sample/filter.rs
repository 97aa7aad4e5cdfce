//! Choosing a token from one position's logits: greedy, or temperature / top-k / top-p sampling.
//! `top_p_filter` follows the reference's `top_p_logits` (reference-semantics §2.2).

use crate::ops::Greedy;
use crate::rng::Rng;

/// How a token is picked from logits. Folded once from the command-line flags, before any loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenChoice {
    Greedy,
    Sample {
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
    },
}

impl TokenChoice {
    /// temperature 0 means greedy, as in most toolkits.
    pub fn from_flags(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Self {
        if temperature <= 0.0 {
            TokenChoice::Greedy
        } else {
            TokenChoice::Sample {
                temperature,
                top_k,
                top_p,
            }
        }
    }
}

/// Log-softmax in f64 for stability, returned as f32.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64
        + logits
            .iter()
            .map(|&x| ((x - max) as f64).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// Keeps the k largest logits, setting the rest to −∞.
pub fn top_k_filter(logits: &mut [f32], k: usize) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    let mut kept = 0;
    for x in logits.iter_mut() {
        // Ties at the threshold keep index order, so exactly k survive.
        if *x > kth || (*x == kth && kept < k) {
            kept += 1;
        } else {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Nucleus filtering: sort descending, drop a token once the cumulative probability of the tokens
/// before it exceeds p (the most likely token is always kept).
pub fn top_p_filter(logits: &mut [f32], p: f32) {
    if p >= 1.0 {
        return;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let lp = log_softmax(logits);
    let mut cum = 0.0f64;
    let mut drop = Vec::new();
    for &i in &order {
        if cum > p as f64 {
            drop.push(i);
        }
        cum += (lp[i] as f64).exp();
    }
    for i in drop {
        logits[i] = f32::NEG_INFINITY;
    }
}

/// Picks a token where its log-probability is not wanted (greedy then skips the Σ exp).
pub fn choose_token(logits: &[f32], choice: TokenChoice, rng: &mut Rng) -> u32 {
    match choice {
        TokenChoice::Greedy => Greedy::token_of(logits),
        _ => choose(logits, choice, rng).0,
    }
}

/// Picks a token; returns it with its log-probability under the (tempered, filtered) distribution.
pub fn choose(logits: &[f32], choice: TokenChoice, rng: &mut Rng) -> (u32, f32) {
    match choice {
        TokenChoice::Greedy => {
            let g = Greedy::of(logits);
            (g.token, g.logprob)
        }
        TokenChoice::Sample {
            temperature,
            top_k,
            top_p,
        } => {
            let mut l: Vec<f32> = logits.iter().map(|x| x / temperature).collect();
            if let Some(k) = top_k {
                top_k_filter(&mut l, k);
            }
            if let Some(p) = top_p {
                top_p_filter(&mut l, p);
            }
            let lp = log_softmax(&l);
            let u = rng.uniform_f64();
            let mut cum = 0.0f64;
            let mut last = 0;
            for (i, &x) in lp.iter().enumerate() {
                if x == f32::NEG_INFINITY {
                    continue;
                }
                last = i;
                cum += (x as f64).exp();
                if u < cum {
                    return (i as u32, x);
                }
            }
            (last as u32, lp[last])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_head_of_the_distribution() {
        // probabilities ≈ 0.64, 0.24, 0.09, 0.03
        let mut l = vec![3.0f32, 2.0, 1.0, 0.0];
        top_p_filter(&mut l, 0.7);
        assert!(l[0].is_finite() && l[1].is_finite());
        assert!(l[2] == f32::NEG_INFINITY && l[3] == f32::NEG_INFINITY);
        let mut one = vec![5.0f32, 0.0];
        top_p_filter(&mut one, 0.01);
        assert!(one[0].is_finite() && one[1] == f32::NEG_INFINITY);
    }

    #[test]
    fn top_k_and_greedy() {
        let mut l = vec![0.5f32, 3.0, 1.0, 2.0];
        top_k_filter(&mut l, 2);
        assert_eq!(l.iter().filter(|x| x.is_finite()).count(), 2);
        let mut rng = Rng::seed(1);
        assert_eq!(choose(&[0.5, 3.0, 1.0], TokenChoice::Greedy, &mut rng).0, 1);
        let c = TokenChoice::from_flags(1.0, Some(1), None);
        for _ in 0..20 {
            assert_eq!(choose(&[0.5, 3.0, 1.0], c, &mut rng).0, 1);
        }
    }

    #[test]
    fn choose_token_is_choose_without_the_logprob() {
        // Ties keep the first maximum; a sampled choice draws the same numbers as `choose`.
        let logits = [0.5f32, 3.0, -1.0, 3.0, 2.0];
        let (mut a, mut b) = (Rng::seed(7), Rng::seed(7));
        assert_eq!(choose_token(&logits, TokenChoice::Greedy, &mut a), 1);
        let c = TokenChoice::from_flags(1.5, None, Some(0.95));
        for _ in 0..50 {
            assert_eq!(
                choose_token(&logits, c, &mut a),
                choose(&logits, c, &mut b).0
            );
        }
    }
}
