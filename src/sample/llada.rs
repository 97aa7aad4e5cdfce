//! LLaDA's own sampler: `generate()` of ML-GSAI/LLaDA `generate.py` (fixtures/README §7.5).
//!
//! * Semi-autoregressive blocks of `block_length` generated positions, left to right; the steps
//!   are shared equally (`block_length` must divide the generated length and the block count the
//!   steps, as the reference asserts). Each block's step counts come from
//!   `get_num_transfer_tokens` (`num_transfer_tokens`): base n/s, the first n mod s steps one more.
//! * No shift: the logits at i score token i (`Shift::Same`).
//! * The token: argmax, or with `temperature` > 0 Gumbel-max on exp(l) / (−ln u)^T in float64
//!   (`add_gumbel_noise`). The ranking score `x0_p`: the softmax probability of that token under
//!   the un-tempered logits (`low_confidence`), or a uniform draw (`random`).
//! * Classifier-free guidance (`cfg_scale` > 0): a second pass with every given position set to
//!   the mask id, and logits = un + (cfg + 1)·(cond − un).
//! * The masked state is `x == mask_id`; only masked positions of the current and earlier blocks
//!   compete (nothing right of the block), and committed tokens are frozen.
//! * The end-of-text guards (`EosGuards`): `logits_eos_inf` bars EOS from being chosen;
//!   `confidence_eos_eot_inf` sets `logits_with_noise[EOS] = logits[EOT] = −inf` after the choice,
//!   so a position that chose EOT ranks last. Quirk, kept: at temperature 0 `add_gumbel_noise`
//!   returns the logits tensor itself, so the EOS write lands in `logits` too and EOS then ranks
//!   last as well; with temperature > 0 only EOT does.
//!
//! Draws come from dlm's seeded `Rng`, not torch's generator, so a sampled run (temperature > 0
//! or `random` remasking) matches the reference in distribution, not draw for draw.

use candle_core::Tensor;
use serde::Deserialize;

use super::filter::log_softmax;
use super::proposal::Pick;
use super::schedule::Phase;
use super::unmask::{ranked_commits, Candidate};
use crate::error::{Error, Result};
use crate::named::{display_and_from_str, Named};
use crate::ops::Greedy;
use crate::rng::Rng;

/// `remasking`: what ranks the masked positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Remasking {
    #[default]
    #[serde(alias = "low_confidence")]
    LowConfidence,
    Random,
}

impl Named for Remasking {
    const WHAT: &'static str = "remasking";
    const ALL: &'static [Self] = &[Self::LowConfidence, Self::Random];

    fn name(self) -> &'static str {
        match self {
            Self::LowConfidence => "low-confidence",
            Self::Random => "random",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::LowConfidence => "Commit the positions whose token has the highest probability",
            Self::Random => "Commit positions in random order",
        }
    }

    fn aliases(self) -> &'static [&'static str] {
        match self {
            Self::LowConfidence => &["low_confidence"],
            Self::Random => &[],
        }
    }
}
display_and_from_str!(Remasking);

/// `generate()`'s end-of-text options, with the token ids its code hard-codes (LLaDA-8B's
/// `<|endoftext|>` and `<|eot_id|>`); a model with another vocabulary sets its own ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EosGuards {
    /// `logits_eos_inf`: EOS's logit is −inf before the token is chosen.
    pub logits_eos_inf: bool,
    /// `confidence_eos_eot_inf`: EOT (and, at temperature 0, EOS) ranks with probability 0.
    pub confidence_eos_eot_inf: bool,
    pub eos_id: u32,
    pub eot_id: u32,
}

impl Default for EosGuards {
    fn default() -> Self {
        Self {
            logits_eos_inf: false,
            confidence_eos_eot_inf: false,
            eos_id: 126081,
            eot_id: 126348,
        }
    }
}

impl EosGuards {
    /// Whether either guard changes a logits row, so a proposal needs the whole row.
    pub fn any(&self) -> bool {
        self.logits_eos_inf || self.confidence_eos_eot_inf
    }

    /// The ids a guard that is on uses must lie inside the vocabulary.
    pub fn check_vocab(&self, vocab: usize) -> Result<()> {
        let uses = [
            (self.logits_eos_inf, "logits_eos_inf", "EOS", self.eos_id),
            (
                self.confidence_eos_eot_inf,
                "confidence_eos_eot_inf",
                "EOT",
                self.eot_id,
            ),
            (
                self.confidence_eos_eot_inf,
                "confidence_eos_eot_inf",
                "EOS",
                self.eos_id,
            ),
        ];
        match uses.iter().find(|u| u.0 && u.3 as usize >= vocab) {
            Some(&(_, setting, what, id)) => Err(Error::option(
                setting,
                format!(
                    "needs the {what} id {id} that LLaDA-8B's generate() hard-codes, which is \
                     outside this model's vocabulary ({vocab})"
                ),
            )),
            None => Ok(()),
        }
    }
}

/// The settings of `generate()` beyond steps, blocks and temperature.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Llada {
    pub remasking: Remasking,
    /// Classifier-free guidance scale; 0 runs no unconditional pass.
    pub cfg_scale: f32,
    pub eos: EosGuards,
}

impl Llada {
    /// The guidance scale when guidance is on.
    pub fn guidance(&self) -> Option<f32> {
        (self.cfg_scale > 0.0).then_some(self.cfg_scale)
    }

    pub fn validate(&self) -> Result<()> {
        let s = self.cfg_scale;
        if !s.is_finite() || s < 0.0 {
            return Err(Error::option(
                "cfg_scale",
                format!("{s} must be a finite number ≥ 0"),
            ));
        }
        Ok(())
    }
}

/// `get_num_transfer_tokens`: how many of `masked` positions each of `steps` steps commits.
pub fn num_transfer_tokens(masked: usize, steps: usize) -> Vec<usize> {
    let (base, extra) = (masked / steps.max(1), masked % steps.max(1));
    (0..steps).map(|i| base + usize::from(i < extra)).collect()
}

/// The blocks of `generated` (one without `block_length`), each with steps / blocks steps. Unlike
/// dlm's own schedule nothing is clamped: a step may commit nothing, as in the reference.
pub fn phases(
    generated: &[usize],
    steps: usize,
    block_length: Option<usize>,
) -> Result<Vec<Phase>> {
    let n = generated.len();
    if n == 0 {
        return Ok(vec![]);
    }
    let block = block_length.unwrap_or(n);
    if !n.is_multiple_of(block) {
        return Err(Error::option(
            "block_length",
            format!("{block} must divide the {n} generated positions (LLaDA's generate())"),
        ));
    }
    let blocks = n / block;
    if steps == 0 || !steps.is_multiple_of(blocks) {
        return Err(Error::option(
            "steps",
            format!("{steps} must be a multiple of the {blocks} blocks (LLaDA's generate())"),
        ));
    }
    Ok(generated
        .chunks(block)
        .map(|b| Phase {
            positions: b.to_vec(),
            steps: steps / blocks,
        })
        .collect())
}

/// The positions that compete at a step of the block ending before `block_end`: every masked
/// one up to there (earlier blocks included, should one hold a committed mask id).
pub fn candidates(masked: &[bool], block_end: usize) -> Vec<usize> {
    (0..block_end.min(masked.len()))
        .filter(|&i| masked[i])
        .collect()
}

/// Step `step` of `phase`: its `num_transfer_tokens` share of the best `candidates` by `ranks`
/// (`torch.topk`; ties, which the reference leaves to torch, go to the lower position).
pub fn step_commits(phase: &Phase, step: usize, candidates: &[usize], ranks: &[f32]) -> Vec<usize> {
    let count = num_transfer_tokens(phase.positions.len(), phase.steps)[step];
    // A position the head skipped (left of a cache's window) has no proposal to commit.
    let cands: Vec<Candidate> = candidates
        .iter()
        .filter(|&&pos| !ranks[pos].is_nan())
        .map(|&pos| Candidate {
            pos,
            rank: ranks[pos],
            prob: 0.0,
        })
        .collect();
    ranked_commits(&cands, count, None)
}

/// The unconditional input of guidance: `ids` with every given (`fixed`) position masked.
pub fn unconditional(ids: &[u32], fixed: &[bool], mask_id: u32) -> Vec<u32> {
    ids.iter()
        .zip(fixed)
        .map(|(&t, &f)| if f { mask_id } else { t })
        .collect()
}

/// Classifier-free guidance on logits rows [R, V]: un + (cfg + 1)·(cond − un).
pub fn guide(cond: &Tensor, un: &Tensor, cfg_scale: f32) -> Result<Tensor> {
    Ok((un + ((cond - un)? * (cfg_scale as f64 + 1.0))?)?)
}

/// `add_gumbel_noise` then argmax: exp(l) / (−ln u)^T in float64 with one uniform u per token,
/// which samples softmax(l / T). The first maximum wins, as `torch.argmax`.
pub fn gumbel_argmax(logits: &[f32], temperature: f64, rng: &mut Rng) -> u32 {
    let mut best = (f64::NEG_INFINITY, 0);
    for (v, &l) in logits.iter().enumerate() {
        let noise = (-rng.uniform_f64().ln()).powf(temperature);
        let score = (l as f64).exp() / noise;
        if score > best.0 {
            best = (score, v);
        }
    }
    best.1 as u32
}

/// The proposal of one logits row (guided under cfg): the token, its log-probability under the
/// un-tempered softmax (after `logits_eos_inf`), and `x0_p`.
pub fn pick(logits: &[f32], temperature: f32, llada: &Llada, rng: &mut Rng) -> Pick {
    let eos = llada.eos;
    let mut row = std::borrow::Cow::Borrowed(logits);
    if eos.logits_eos_inf {
        row.to_mut()[eos.eos_id as usize] = f32::NEG_INFINITY;
    }
    let token = match temperature > 0.0 {
        true => gumbel_argmax(&row, temperature as f64, rng),
        false => Greedy::token_of(&row),
    };
    let logprob = log_softmax(&row)[token as usize];
    let mut pick = ranked(token, logprob, llada.remasking, rng);
    if eos.confidence_eos_eot_inf && llada.remasking == Remasking::LowConfidence {
        let row = row.to_mut();
        row[eos.eot_id as usize] = f32::NEG_INFINITY;
        // At temperature 0 `logits_with_noise` is `logits` itself (the quirk in the module doc).
        if temperature <= 0.0 {
            row[eos.eos_id as usize] = f32::NEG_INFINITY;
        }
        pick.rank = log_softmax(row)[token as usize].exp();
    }
    pick
}

/// The proposal from a greedy head row (temperature 0, no guidance, no end-of-text guard).
pub fn pick_greedy(g: Greedy, remasking: Remasking, rng: &mut Rng) -> Pick {
    ranked(g.token, g.logprob, remasking, rng)
}

fn ranked(token: u32, logprob: f32, remasking: Remasking, rng: &mut Rng) -> Pick {
    let rank = match remasking {
        Remasking::LowConfidence => logprob.exp(),
        Remasking::Random => rng.uniform_f32(),
    };
    Pick {
        token,
        logprob,
        rank,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_counts_split_each_block() {
        // The fixture's cases: 16 positions in blocks of 8 over 8 steps; 12 in one block over 5.
        assert_eq!(num_transfer_tokens(8, 4), vec![2, 2, 2, 2]);
        assert_eq!(num_transfer_tokens(12, 5), vec![3, 3, 2, 2, 2]);
        // More steps than positions: the late steps commit nothing.
        assert_eq!(num_transfer_tokens(2, 4), vec![1, 1, 0, 0]);
        let g: Vec<usize> = (5..21).collect();
        let p = phases(&g, 8, Some(8)).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].positions[0], p[1].steps), (13, 4));
        assert_eq!(phases(&g[..12], 5, None).unwrap()[0].steps, 5);
        let e = phases(&g, 8, Some(5)).unwrap_err().to_string();
        assert!(e.contains("block_length") && e.contains("16"), "{e}");
        assert!(phases(&g, 3, Some(8)).is_err());
    }

    #[test]
    fn commits_rank_only_the_block_and_before() {
        let phase = Phase {
            positions: vec![2, 3, 4],
            steps: 2,
        };
        let masked = [false, true, true, false, true, true];
        // Position 5 lies right of the block, whatever its score.
        let c = candidates(&masked, 5);
        assert_eq!(c, vec![1, 2, 4]);
        let ranks = [0.0, 0.5, 0.9, 0.0, 0.7, 1.0];
        assert_eq!(step_commits(&phase, 0, &c, &ranks), vec![2, 4]);
        assert_eq!(step_commits(&phase, 1, &c, &ranks), vec![2]);
    }

    #[test]
    fn gumbel_sampling_is_seeded_and_follows_the_tempered_softmax() {
        let logits = [1.0f32, 0.0, 2.0, -1.0];
        let draw = |seed| gumbel_argmax(&logits, 1.0, &mut Rng::seed(seed));
        assert_eq!(
            (0..50).map(draw).collect::<Vec<_>>(),
            (0..50).map(draw).collect::<Vec<_>>()
        );
        let mut rng = Rng::seed(7);
        let n = 40_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[gumbel_argmax(&logits, 0.5, &mut rng) as usize] += 1;
        }
        // softmax(l / 0.5)
        let z: f64 = logits.iter().map(|&l| (2.0 * l as f64).exp()).sum();
        for (v, &c) in counts.iter().enumerate() {
            let want = (2.0 * logits[v] as f64).exp() / z;
            let got = c as f64 / n as f64;
            assert!((got - want).abs() < 0.01, "token {v}: {got} vs {want}");
        }
        // Low temperature concentrates on the argmax.
        assert!((0..200).all(|s| gumbel_argmax(&logits, 0.01, &mut Rng::seed(s)) == 2));
    }

    #[test]
    fn picks_rank_by_probability_or_at_random() {
        let logits = [0.0f32, 3.0, 1.0];
        let low = Llada::default();
        let random = Llada {
            remasking: Remasking::Random,
            ..low
        };
        let p = pick(&logits, 0.0, &low, &mut Rng::seed(1));
        let lp = log_softmax(&logits);
        assert_eq!(p.token, 1);
        assert!((p.rank - lp[1].exp()).abs() < 1e-6);
        let r1 = pick(&logits, 0.0, &random, &mut Rng::seed(3));
        let r2 = pick(&logits, 0.0, &random, &mut Rng::seed(3));
        assert_eq!((r1.token, r1.rank), (r2.token, r2.rank));
        assert!((0.0..1.0).contains(&r1.rank) && r1.rank != p.rank);
        let g = pick_greedy(
            Greedy::of(&logits),
            Remasking::LowConfidence,
            &mut Rng::seed(1),
        );
        assert_eq!(g.token, 1);
        assert!((g.rank - p.rank).abs() < 1e-6);
    }

    #[test]
    fn end_of_text_guards_follow_generate() {
        // Token 1 plays EOS, 2 EOT.
        let guards = |logits_eos_inf, confidence_eos_eot_inf| Llada {
            eos: EosGuards {
                logits_eos_inf,
                confidence_eos_eot_inf,
                eos_id: 1,
                eot_id: 2,
            },
            ..Llada::default()
        };
        let logits = [0.0f32, 3.0, 2.0, 1.0];
        let lp = |row: &[f32], t: usize| log_softmax(row)[t].exp();
        // logits_eos_inf: EOS is never chosen, greedy or sampled; probabilities exclude it.
        let p = pick(&logits, 0.0, &guards(true, false), &mut Rng::seed(1));
        let barred = [0.0f32, f32::NEG_INFINITY, 2.0, 1.0];
        assert_eq!(p.token, 2);
        assert!((p.rank - lp(&barred, 2)).abs() < 1e-6);
        assert!((0..300)
            .all(|s| { pick(&logits, 1.0, &guards(true, false), &mut Rng::seed(s)).token != 1 }));
        // confidence_eos_eot_inf: a chosen EOT ranks with probability 0 ...
        let p = pick(&logits, 0.0, &guards(true, true), &mut Rng::seed(1));
        assert_eq!((p.token, p.rank), (2, 0.0));
        assert!((p.logprob.exp() - lp(&barred, 2)).abs() < 1e-6);
        // ... at temperature 0 a chosen EOS too (logits_with_noise is logits) ...
        let p = pick(&logits, 0.0, &guards(false, true), &mut Rng::seed(1));
        assert_eq!((p.token, p.rank), (1, 0.0));
        // ... but not with temperature > 0, where the EOS write misses the ranked logits.
        let eos_drawn = (0..300)
            .map(|s| pick(&logits, 1.0, &guards(false, true), &mut Rng::seed(s)))
            .find(|p| p.token == 1)
            .unwrap();
        let no_eot = [0.0f32, 3.0, f32::NEG_INFINITY, 1.0];
        assert!((eos_drawn.rank - lp(&no_eot, 1)).abs() < 1e-6);
        // Another token ranks by its probability without EOT (and EOS, at temperature 0).
        let other = [0.0f32, 1.0, 2.0, 3.0];
        let p = pick(&other, 0.0, &guards(false, true), &mut Rng::seed(1));
        let without = [0.0f32, f32::NEG_INFINITY, f32::NEG_INFINITY, 3.0];
        assert_eq!(p.token, 3);
        assert!((p.rank - lp(&without, 3)).abs() < 1e-6);
        // Ids outside the vocabulary are refused only when a guard is on.
        assert!(guards(false, false).eos.check_vocab(2).is_ok());
        assert!(guards(true, false).eos.check_vocab(2).is_ok());
        let e = guards(true, false).eos.check_vocab(1).unwrap_err();
        assert!(e.to_string().contains("EOS id 1"), "{e}");
        let e = guards(false, true)
            .eos
            .check_vocab(2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("EOT id 2") && e.contains("(2)"), "{e}");
    }

    #[test]
    fn guidance_masks_the_prompt_and_extrapolates() {
        assert_eq!(
            unconditional(&[4, 5, 9, 9, 6], &[true, true, false, false, true], 9),
            vec![9, 9, 9, 9, 9]
        );
        let dev = candle_core::Device::Cpu;
        let cond = Tensor::new(&[[1.0f32, 2.0]], &dev).unwrap();
        let un = Tensor::new(&[[0.5f32, 3.0]], &dev).unwrap();
        let g: Vec<Vec<f32>> = guide(&cond, &un, 1.0).unwrap().to_vec2().unwrap();
        assert_eq!(g, vec![vec![1.5, 1.0]]);
    }
}
