//! Scoring an answer given its context, by diffusion or autoregressively.
//!
//! * `mc_score_with_draws` is the reference's multiple-choice scorer, `eval_forward`
//!   (reference-semantics §3.1): a T-point Monte-Carlo estimate of the masked-token loss. For
//!   t = T, T−1, …, 1 (the reference's order) one random mask hides each answer token with
//!   probability t/T; the shifted cross-entropy over the hidden tokens is averaged (0 when none
//!   is hidden); the score is the sum over t divided by T. Unweighted: no 1/t. Lower is better.
//! * `elbo_nll` is the estimator of LLaDA and Dream: t ~ U, each answer token hidden with
//!   probability t, Σ CE / t; its mean over samples bounds the answer's NLL from above.
//! * `ar_logprobs` is the AR baseline: causal log-probabilities of the answer tokens.
//!
//! All three go through `target_logprobs`, which batches many rows into few forwards (the T
//! masks of one answer, the answers of one question) and runs the LM head on scored rows only.

use candle_core::{Device, Tensor};

use crate::diffusion::noise::{mask_tokens, time_from_uniform};
use crate::diffusion::shift::Shift;
use crate::error::Result;
use crate::model::{ids_tensor, LanguageModel};
use crate::ops::{cross_entropy, AttentionMask};
use crate::rng::Rng;

/// One sequence to score: its tokens and the (logit row, target token) pairs wanted from it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    pub ids: Vec<u32>,
    pub targets: Vec<(usize, u32)>,
    /// Classifier-free guidance, when the row is scored under it.
    pub guidance: Option<Guidance>,
}

/// Classifier-free guidance of a scored row, as LLaDA's `get_logits`: the row is run again with
/// its prompt masked (`unconditional`), and the targets are scored by
/// `un + (scale + 1) · (cond − un)`, the logits combined before the softmax.
#[derive(Debug, Clone, PartialEq)]
pub struct Guidance {
    pub scale: f32,
    pub unconditional: Vec<u32>,
}

impl ScoreRow {
    /// Diffusion targets: the tokens of `x0` hidden in `x_t`, each scored by the row `shift`
    /// gives it (§1.3). As in the reference the test is `x_t == mask_id`.
    pub fn diffusion(x0: &[u32], x_t: Vec<u32>, mask_id: u32, shift: Shift) -> Self {
        let targets = shift.targets(x0, |j| x_t[j] == mask_id).collect();
        Self {
            ids: x_t,
            targets,
            guidance: None,
        }
    }

    /// Next-token targets for positions `from..L`: row i−1 predicts token i.
    pub fn autoregressive(ids: Vec<u32>, from: usize) -> Self {
        let targets = Shift::Next.targets(&ids, |j| j >= from).collect();
        Self {
            ids,
            targets,
            guidance: None,
        }
    }

    /// The row under classifier-free guidance of `scale`, its first `prompt_len` tokens masked
    /// in the unconditional pass (LLaDA's `un_batch[prompt_index] = mask_id`). A scale of 0 is
    /// no guidance, as in LLaDA (`if cfg_scale > 0.`).
    pub fn guided(self, scale: f32, prompt_len: usize, mask_id: u32) -> Self {
        if scale <= 0.0 {
            return self;
        }
        let mut unconditional = self.ids.clone();
        for id in unconditional.iter_mut().take(prompt_len) {
            *id = mask_id;
        }
        Self {
            guidance: Some(Guidance {
                scale,
                unconditional,
            }),
            ..self
        }
    }
}

/// Which attention the rows are scored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// Bidirectional: rows are grouped by exact length (padding would change every position).
    Diffusion,
    /// Causal: rows are right-padded within a batch (later tokens cannot change earlier rows).
    Autoregressive,
}

/// At most this many tokens (rows × length) per forward.
pub const TOKENS_PER_FORWARD: usize = 8192;

/// Log-probabilities of every row's targets, in order. Rows without targets cost nothing.
pub fn target_logprobs(
    model: &dyn LanguageModel,
    rows: &[ScoreRow],
    attention: Attention,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out: Vec<Vec<f32>> = vec![vec![]; rows.len()];
    let mut order: Vec<usize> = (0..rows.len())
        .filter(|&r| !rows[r].targets.is_empty())
        .collect();
    order.sort_by_key(|&r| rows[r].ids.len());
    let mut start = 0;
    while start < order.len() {
        // Extend the batch while it fits the token budget (and, bidirectionally, one length).
        let first_len = rows[order[start]].ids.len();
        let mut end = start + 1;
        while end < order.len() {
            let len = rows[order[end]].ids.len();
            let fits = (end + 1 - start) * len <= TOKENS_PER_FORWARD.max(len);
            if !fits || (attention == Attention::Diffusion && len != first_len) {
                break;
            }
            end += 1;
        }
        let batch = &order[start..end];
        let l = rows[*batch.last().unwrap_or(&order[start])].ids.len();
        let ids: Vec<Vec<u32>> = batch
            .iter()
            .map(|&r| {
                let mut ids = rows[r].ids.clone();
                ids.resize(l, 0); // right padding, causal only
                ids
            })
            .collect();
        let mut flat_rows = Vec::new();
        let mut targets = Vec::new();
        for (b, &r) in batch.iter().enumerate() {
            for &(row, target) in &rows[r].targets {
                flat_rows.push((b * l + row) as u32);
                targets.push(target);
            }
        }
        let mask = match attention {
            Attention::Diffusion => AttentionMask::Bidirectional,
            Attention::Autoregressive => AttentionMask::Causal,
        };
        let flat_rows = Tensor::new(flat_rows.as_slice(), device)?;
        let mut logits = model.logits_rows(&ids_tensor(&ids, device)?, &mask, &flat_rows)?;
        if batch.iter().any(|&r| rows[r].guidance.is_some()) {
            logits = guide(model, rows, batch, l, &mask, &flat_rows, logits, device)?;
        }
        let ce: Vec<f32> =
            cross_entropy(&logits, &Tensor::new(targets.as_slice(), device)?)?.to_vec1()?;
        let mut k = 0;
        for &r in batch {
            let n = rows[r].targets.len();
            out[r] = ce[k..k + n].iter().map(|c| -c).collect();
            k += n;
        }
        start = end;
    }
    Ok(out)
}

/// The logits of a batch's target rows under each row's guidance: the unconditional inputs run
/// as a second batch, then `un + (scale + 1) · (cond − un)` per target (scale 0 for a row
/// without guidance leaves its logits as they are).
#[allow(clippy::too_many_arguments)]
fn guide(
    model: &dyn LanguageModel,
    rows: &[ScoreRow],
    batch: &[usize],
    l: usize,
    mask: &AttentionMask,
    flat_rows: &Tensor,
    cond: Tensor,
    device: &Device,
) -> Result<Tensor> {
    let un_ids: Vec<Vec<u32>> = batch
        .iter()
        .map(|&r| {
            let mut ids = match &rows[r].guidance {
                Some(g) => g.unconditional.clone(),
                None => rows[r].ids.clone(),
            };
            ids.resize(l, 0);
            ids
        })
        .collect();
    let scales: Vec<f32> = batch
        .iter()
        .flat_map(|&r| {
            let s = rows[r].guidance.as_ref().map_or(0.0, |g| g.scale);
            std::iter::repeat_n(s + 1.0, rows[r].targets.len())
        })
        .collect();
    let un = model.logits_rows(&ids_tensor(&un_ids, device)?, mask, flat_rows)?;
    let n = scales.len();
    let scales = Tensor::from_vec(scales, (n, 1), device)?.to_dtype(cond.dtype())?;
    Ok((&un + (cond - &un)?.broadcast_mul(&scales)?)?)
}

/// The row that scores each hidden token for `model`: its family's (the shift for DiffuGPT and
/// DiffuLLaMA, the same position for LLaDA, Dream's concatenation).
pub fn scorer_shift(model: &dyn LanguageModel) -> Shift {
    Shift::for_sampling(model.config().arch)
}

/// The reference scorer's rows: one noised copy of `ids` per step, t = T..1, rate t/T, each
/// hidden token scored by the row `shift` names.
pub fn mc_rows(
    ids: &[u32],
    src: &[bool],
    mask_id: u32,
    draws: &[Vec<f32>],
    shift: Shift,
) -> Vec<ScoreRow> {
    let steps = draws.len();
    draws
        .iter()
        .enumerate()
        .map(|(k, draw)| {
            let rate = (steps - k) as f32 / steps as f32;
            let x_t = mask_tokens(ids, draw, rate, src, mask_id).x_t;
            ScoreRow::diffusion(ids, x_t, mask_id, shift)
        })
        .collect()
}

/// Per-step mean CE (0 when nothing was hidden) and their mean: the reference's score.
pub fn mc_reduce(logprobs: &[Vec<f32>]) -> (Vec<f32>, f32) {
    let per_t: Vec<f32> = logprobs
        .iter()
        .map(|lp| {
            if lp.is_empty() {
                0.0
            } else {
                -lp.iter().map(|&x| x as f64).sum::<f64>() as f32 / lp.len() as f32
            }
        })
        .collect();
    let score = per_t.iter().sum::<f32>() / per_t.len().max(1) as f32;
    (per_t, score)
}

/// The per-t losses (in the order t = T..1) and the score of one sequence. `draws[k]` are the
/// uniforms of step k, one per position; context positions (`src`) are never masked.
pub fn mc_score_with_draws(
    model: &dyn LanguageModel,
    ids: &[u32],
    src: &[bool],
    mask_id: u32,
    draws: &[Vec<f32>],
    device: &Device,
) -> Result<(Vec<f32>, f32)> {
    let rows = mc_rows(ids, src, mask_id, draws, scorer_shift(model));
    let lp = target_logprobs(model, &rows, Attention::Diffusion, device)?;
    Ok(mc_reduce(&lp))
}

/// Uniform draws for T steps over `len` positions.
pub fn mc_draws(steps: usize, len: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
    (0..steps)
        .map(|_| (0..len).map(|_| rng.uniform_f32()).collect())
        .collect()
}

/// The ELBO estimator's rows: `samples` noised copies, each with its own t (returned alongside).
pub fn elbo_rows(
    ids: &[u32],
    src: &[bool],
    mask_id: u32,
    samples: usize,
    shift: Shift,
    rng: &mut Rng,
) -> Vec<(f32, ScoreRow)> {
    (0..samples)
        .map(|_| {
            let t = time_from_uniform(rng.uniform_f32());
            let draw: Vec<f32> = ids.iter().map(|_| rng.uniform_f32()).collect();
            let x_t = mask_tokens(ids, &draw, t, src, mask_id).x_t;
            (t, ScoreRow::diffusion(ids, x_t, mask_id, shift))
        })
        .collect()
}

/// LLaDA's `get_log_likelihood` rows (ML-GSAI/LLaDA get_log_likelihood.py, `forward_process`):
/// `mc_num` copies in batches of `batch`. In each batch the number of hidden answer tokens is
/// stratified: k uniform in 1..=n (n answer tokens), row i hides round(k + i·n/batch) wrapped
/// into 1..=n tokens, chosen by a random permutation, and is weighted by n / count. No shift:
/// logits at i score token i. Returned with each row's mask ratio count / n.
///
/// How it differs from the paper's estimator (`elbo_rows`): the mask count is exact and
/// stratified across a batch instead of each token being hidden independently with t ~ U, so
/// the ratio is never below 1/n and no row hides nothing; the mean over rows of Σ CE / ratio is
/// the same unbiased bound with lower variance. `cfg` > 0 scores every row under
/// classifier-free guidance with the prompt masked in the unconditional pass
/// (`ScoreRow::guided`). Rounding is half-to-even as `torch.round`; the draws come from dlm's
/// generator.
pub fn llada_elbo_rows(
    ids: &[u32],
    prompt_len: usize,
    mask_id: u32,
    mc_num: usize,
    batch: usize,
    cfg: f32,
    rng: &mut Rng,
) -> Vec<(f32, ScoreRow)> {
    let n = ids.len() - prompt_len;
    let batch = batch.max(1);
    let mut out = Vec::with_capacity(mc_num);
    for b in 0..mc_num.div_ceil(batch) {
        let rows = batch.min(mc_num - b * batch);
        let k = 1 + (rng.next_u64() % n as u64) as usize;
        for i in 0..rows {
            let stratum =
                (k as f64 + i as f64 * n as f64 / batch as f64).round_ties_even() as usize;
            let count = (stratum - 1) % n + 1;
            // A uniform permutation of the answer positions (Fisher–Yates); the first `count`
            // are hidden.
            let mut order: Vec<usize> = (prompt_len..ids.len()).collect();
            for j in (1..order.len()).rev() {
                order.swap(j, (rng.next_u64() % (j as u64 + 1)) as usize);
            }
            let mut x_t = ids.to_vec();
            for &j in &order[..count] {
                x_t[j] = mask_id;
            }
            let ratio = count as f32 / n as f32;
            let row = ScoreRow::diffusion(ids, x_t, mask_id, Shift::Same);
            out.push((ratio, row.guided(cfg, prompt_len, mask_id)));
        }
    }
    out
}

/// Mean over samples of Σ CE / t: an upper bound on the answer's NLL (nats, summed over tokens).
pub fn elbo_reduce(times: &[f32], logprobs: &[Vec<f32>]) -> f64 {
    let total: f64 = times
        .iter()
        .zip(logprobs)
        .map(|(&t, lp)| -lp.iter().map(|&x| x as f64).sum::<f64>() / t as f64)
        .sum();
    total / times.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_shift() {
        let r = ScoreRow::diffusion(&[10, 11, 12, 13], vec![7, 11, 7, 7], 7, Shift::Next);
        // position 0 is masked but never a target
        assert_eq!(r.targets, vec![(1, 12), (2, 13)]);
        let a = ScoreRow::autoregressive(vec![1, 2, 3, 4], 2);
        assert_eq!(a.targets, vec![(1, 3), (2, 4)]);
        let (per_t, score) = mc_reduce(&[vec![-1.0, -3.0], vec![]]);
        assert_eq!((per_t, score), (vec![2.0, 0.0], 1.0));
        assert!((elbo_reduce(&[0.5, 0.25], &[vec![-1.0], vec![-1.0, -1.0]]) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn llada_rows_hide_stratified_counts_of_the_answer_only() {
        let ids: Vec<u32> = (10..20).collect(); // 3 prompt tokens, 7 answer tokens
        let mut rng = Rng::seed(4);
        let rows = llada_elbo_rows(&ids, 3, 7, 10, 4, 0.0, &mut rng);
        assert_eq!(rows.len(), 10);
        for (k, batch) in rows.chunks(4).enumerate() {
            let counts: Vec<usize> = batch.iter().map(|(_, r)| r.targets.len()).collect();
            for ((ratio, r), &c) in batch.iter().zip(&counts) {
                assert!((1..=7).contains(&c) && (*ratio - c as f32 / 7.0).abs() < 1e-7);
                assert_eq!(&r.ids[..3], &ids[..3], "the prompt is never hidden");
                // No shift: the row of a hidden position is the position itself.
                assert!(r.targets.iter().all(|&(row, tok)| ids[row] == tok));
            }
            // Stratified: consecutive rows are n/batch = 1.75 apart (mod n), rounded.
            if k < 2 {
                let first = counts[0];
                let want: Vec<usize> = (0..4)
                    .map(|i| {
                        ((first as f64 + i as f64 * 1.75).round_ties_even() as usize - 1) % 7 + 1
                    })
                    .collect();
                assert_eq!(counts, want);
            }
        }
    }
}
