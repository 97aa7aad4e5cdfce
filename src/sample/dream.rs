//! Dream's own sampler: `diffusion_generate()` / `_sample()` of Dream's `generation_utils.py`
//! (the same code path in NVlabs/Fast-dLLM `dream/model/generation_utils.py`; fixtures/README
//! §7.5).
//!
//! * One phase over the whole canvas (no blocks) and `steps` forwards on the float32
//!   `linspace(1, eps, steps + 1)` (`timesteps`). Step i commits int(n·(1 − s/t)) of the n
//!   masked positions, in float32 with truncation, and the last step all that remain
//!   (`transfer_count`): with eps the counts are not uniform.
//! * The shift `cat(logits[:, :1], logits[:, :-1])` (`Shift::Concat`).
//! * Proposals as `sample_tokens`: logits / temperature, then top-p, then top-k (in that order,
//!   at every temperature), then a draw (temperature > 0) or the argmax. The ranking score
//!   (`alg`): the token's probability (`maskgit_plus`), top-1 − top-2 (`topk_margin`) or the
//!   negative entropy Σ p·ln(p + 1e-10) (`entropy`), all under the filtered distribution.
//! * The top-k ranking, or with `alg_temp` > 0 a draw without replacement from
//!   softmax(confidence / alg_temp). `origin` commits each masked position with probability
//!   1 − s/t instead, unranked.
//! * The masked state is `x == mask_id`; committed tokens are frozen.
//!
//! Draws (`origin`, temperature > 0, `alg_temp`) come from dlm's seeded `Rng`: torch's generator
//! cannot be reproduced, so such runs match the reference in distribution, not draw for draw.

use serde::Deserialize;

use super::filter::{choose, log_softmax, top_k_filter, top_p_filter, TokenChoice};
use super::proposal::Pick;
use super::unmask::{distribution_score, ranked_commits, Candidate, Rule};
use crate::error::{Error, Result};
use crate::named::{display_and_from_str, Named};
use crate::ops::Greedy;
use crate::rng::Rng;

/// `eps` of `DreamGenerationConfig`: where the time grid ends.
pub const DEFAULT_EPS: f32 = 1e-3;

/// `alg`: how the masked positions are chosen each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alg {
    Origin,
    #[serde(alias = "maskgit_plus")]
    MaskgitPlus,
    #[serde(alias = "topk_margin")]
    TopkMargin,
    /// What Dream's own demos use (the library's default is `origin`).
    #[default]
    Entropy,
}

impl Named for Alg {
    const WHAT: &'static str = "alg";
    const ALL: &'static [Self] = &[
        Self::Origin,
        Self::MaskgitPlus,
        Self::TopkMargin,
        Self::Entropy,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::MaskgitPlus => "maskgit-plus",
            Self::TopkMargin => "topk-margin",
            Self::Entropy => "entropy",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::Origin => "Each masked position commits with probability 1 - s/t (random)",
            Self::MaskgitPlus => "Commit the positions whose token has the highest probability",
            Self::TopkMargin => "Commit by top-1 minus top-2 probability",
            Self::Entropy => "Commit the lowest-entropy positions",
        }
    }

    /// Dream's own Python spellings (`alg="maskgit_plus"`).
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Self::MaskgitPlus => &["maskgit_plus"],
            Self::TopkMargin => &["topk_margin"],
            _ => &[],
        }
    }
}
display_and_from_str!(Alg);

/// The settings of `diffusion_generate()` beyond steps and temperature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dream {
    pub alg: Alg,
    /// Ranking temperature: > 0 draws the committed positions from softmax(confidence / it).
    pub alg_temp: Option<f32>,
    pub eps: f32,
    /// Filters applied at every temperature (they change the confidence even under argmax).
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
}

impl Default for Dream {
    fn default() -> Self {
        Self {
            alg: Alg::default(),
            alg_temp: None,
            eps: DEFAULT_EPS,
            top_p: None,
            top_k: None,
        }
    }
}

impl Dream {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.eps) {
            let eps = self.eps;
            return Err(Error::option("eps", format!("{eps} is not in [0, 1)")));
        }
        if let Some(a) = self.alg_temp.filter(|a| !a.is_finite() || *a < 0.0) {
            return Err(Error::option(
                "alg_temp",
                format!("{a} must be a finite number ≥ 0"),
            ));
        }
        Ok(())
    }

    /// Whether a greedy head row (token and its log-probability) is all a proposal needs.
    pub fn greedy_rows_suffice(&self, temperature: f32) -> bool {
        let unfiltered = self.top_p.is_none_or(|p| p >= 1.0) && self.top_k.is_none();
        temperature <= 0.0
            && (self.alg == Alg::Origin || (self.alg == Alg::MaskgitPlus && unfiltered))
    }

    /// Whether the run draws anything from the RNG.
    pub fn draws(&self, temperature: f32) -> bool {
        temperature > 0.0 || self.alg == Alg::Origin || self.alg_temp.is_some_and(|a| a > 0.0)
    }
}

/// `torch.linspace(1, eps, steps + 1)` in float32, element by element as torch's CUDA kernel (and
/// its CPU kernel below 16 points) computes it: the first half counted up from 1, the second
/// down from eps, with step (eps − 1)/steps. Both kernels are compiled with fused multiply-add
/// (nvcc's default, GCC's AVX2 build), so `a + step·i` rounds once; the fixture's grid
/// (`sample_*_timesteps`) differs from the twice-rounded one in the last bit at two points.
pub fn timesteps(steps: usize, eps: f32) -> Vec<f32> {
    let n = steps + 1;
    let step = (eps - 1.0) / steps.max(1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| match i < halfway {
            true => step.mul_add(i as f32, 1.0),
            false => (-step).mul_add((n - i - 1) as f32, eps),
        })
        .collect()
}

/// How many of `masked` positions step `i` commits on `ts` (`timesteps`): int(n·(1 − s/t)) in
/// float32, the last step all. The reference averages n over its batch; dlm's canvases are
/// independent requests, so each uses its own.
pub fn transfer_count(masked: usize, i: usize, ts: &[f32]) -> usize {
    if i + 2 >= ts.len() {
        return masked;
    }
    let (t, s) = (ts[i], ts[i + 1]);
    (masked as f32 * (1.0 - s / t)) as usize
}

/// `sample_tokens` on one (shifted) logits row: the token, its log-probability under the
/// filtered distribution, and the `alg`'s confidence.
pub fn pick(logits: &[f32], temperature: f32, d: &Dream, rng: &mut Rng) -> Pick {
    let mut l: Vec<f32> = match temperature > 0.0 {
        true => logits.iter().map(|x| x / temperature).collect(),
        false => logits.to_vec(),
    };
    if let Some(p) = d.top_p.filter(|&p| p < 1.0) {
        top_p_filter(&mut l, p);
    }
    // torch keeps every logit tied with the k-th; this keeps exactly k (ties are measure zero).
    if let Some(k) = d.top_k {
        top_k_filter(&mut l, k);
    }
    let (token, logprob) = match temperature > 0.0 {
        // A categorical draw from softmax(l): l is already tempered and filtered.
        true => choose(&l, TokenChoice::from_flags(1.0, None, None), rng),
        false => {
            let g = Greedy::of(&l);
            (g.token, g.logprob)
        }
    };
    let rank = match d.alg {
        Alg::Origin | Alg::MaskgitPlus => logprob.exp(),
        Alg::TopkMargin => distribution_score(Rule::Margin, &l),
        Alg::Entropy => neg_entropy(&l),
    };
    Pick {
        token,
        logprob,
        rank,
    }
}

/// The proposal from a greedy head row (see `Dream::greedy_rows_suffice`).
pub fn pick_greedy(g: Greedy) -> Pick {
    Pick {
        token: g.token,
        logprob: g.logprob,
        rank: g.logprob.exp(),
    }
}

/// Σ p·ln(p + 1e-10), Dream's `neg_entropy` confidence, with its epsilon.
fn neg_entropy(logits: &[f32]) -> f32 {
    log_softmax(logits)
        .iter()
        .map(|&lp| {
            let p = lp.exp();
            (p * (p + 1e-10).ln()) as f64
        })
        .sum::<f64>() as f32
}

/// Step `i` of the run on `ts`: of the `masked` positions, those that commit, by `ranks`.
pub fn step_commits(
    d: &Dream,
    i: usize,
    ts: &[f32],
    masked: &[usize],
    ranks: &[f32],
    rng: &mut Rng,
) -> Vec<usize> {
    if d.alg == Alg::Origin {
        let p = match i + 2 >= ts.len() {
            true => 1.0,
            false => 1.0 - ts[i + 1] / ts[i],
        };
        return masked
            .iter()
            .copied()
            .filter(|_| rng.uniform_f32() < p)
            .collect();
    }
    let count = transfer_count(masked.len(), i, ts);
    if count == 0 {
        return vec![];
    }
    let keys = match d.alg_temp.filter(|&a| a > 0.0) {
        None => masked.iter().map(|&p| ranks[p]).collect(),
        Some(a) => sampling_keys(masked.iter().map(|&p| ranks[p]), a, rng),
    };
    let cands: Vec<Candidate> = masked
        .iter()
        .zip(keys)
        .map(|(&pos, rank)| Candidate {
            pos,
            rank,
            prob: 0.0,
        })
        .collect();
    ranked_commits(&cands, count, None)
}

/// `torch.multinomial(softmax(c / alg_temp), k)` without replacement as torch's CPU kernel draws
/// it: the top k of w / E with E ~ Exp(1), one draw per position (the same law as drawing one
/// position at a time).
fn sampling_keys(conf: impl Iterator<Item = f32>, alg_temp: f32, rng: &mut Rng) -> Vec<f32> {
    let scaled: Vec<f64> = conf.map(|c| (c / alg_temp) as f64).collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scaled.iter().map(|&x| (x - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .map(|&w| {
            let e = -(1.0 - rng.uniform_f64()).ln();
            (w / total / e) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eps_makes_the_counts_uneven() {
        let ts = timesteps(8, DEFAULT_EPS);
        // The fixture's `sample_*_timesteps`, bit for bit.
        let want = [
            1.0,
            0.875124990940094,
            0.750249981880188,
            0.625374972820282,
            0.5005000233650208,
            0.37562501430511475,
            0.25075000524520874,
            0.12587499618530273,
            0.0010000000474974513,
        ];
        assert_eq!(ts, want.map(|t: f64| t as f32));
        let mut n = 16;
        let mut counts = vec![];
        for i in 0..8 {
            let k = transfer_count(n, i, &ts);
            counts.push(k);
            n -= k;
        }
        assert_eq!(counts, vec![1, 2, 2, 2, 2, 2, 2, 3]);
        // Without eps the grid is uniform and so are the counts.
        let ts0 = timesteps(4, 0.0);
        assert_eq!(ts0, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(transfer_count(8, 0, &ts0), 2);
        assert_eq!(transfer_count(5, 3, &ts0), 5);
    }

    #[test]
    fn confidences_follow_sample_tokens() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let lp = log_softmax(&logits);
        let p: Vec<f32> = lp.iter().map(|x| x.exp()).collect();
        let d = |alg| Dream {
            alg,
            ..Dream::default()
        };
        let mut rng = Rng::seed(0);
        let m = pick(&logits, 0.0, &d(Alg::MaskgitPlus), &mut rng);
        assert_eq!(m.token, 0);
        assert!((m.rank - p[0]).abs() < 1e-6);
        let t = pick(&logits, 0.0, &d(Alg::TopkMargin), &mut rng);
        assert!((t.rank - (p[0] - p[1])).abs() < 1e-6);
        let e = pick(&logits, 0.0, &d(Alg::Entropy), &mut rng);
        let want: f32 = p.iter().map(|&q| q * (q + 1e-10).ln()).sum();
        assert!((e.rank - want).abs() < 1e-6);
        // top_p 0.5 keeps only the top token (p0 ≈ 0.64): the confidence becomes 1 at argmax.
        let filtered = Dream {
            top_p: Some(0.5),
            ..d(Alg::MaskgitPlus)
        };
        let f = pick(&logits, 0.0, &filtered, &mut rng);
        assert_eq!((f.token, f.rank), (0, 1.0));
        assert!(!filtered.greedy_rows_suffice(0.0) && d(Alg::MaskgitPlus).greedy_rows_suffice(0.0));
        // Sampling with top_p: seeded, and only kept tokens come out.
        let draw = |seed| pick(&logits, 1.0, &filtered, &mut Rng::seed(seed)).token;
        assert!((0..100).all(|s| draw(s) == 0));
        let wide = Dream {
            top_p: Some(0.9),
            ..d(Alg::MaskgitPlus)
        };
        let toks: Vec<u32> = (0..200)
            .map(|s| pick(&logits, 1.0, &wide, &mut Rng::seed(s)).token)
            .collect();
        // p0 + p1 ≈ 0.87 < 0.9, so three tokens survive; the last never does.
        assert!(toks.contains(&1) && toks.contains(&2) && !toks.contains(&3));
        let again: Vec<u32> = (0..200)
            .map(|s| pick(&logits, 1.0, &wide, &mut Rng::seed(s)).token)
            .collect();
        assert_eq!(toks, again);
    }

    #[test]
    fn commits_rank_draw_or_transfer() {
        let ts = timesteps(4, 0.0);
        let masked = [1, 2, 3, 4, 6, 7, 8, 9];
        let mut ranks = [0.0f32; 10];
        for (k, &p) in masked.iter().enumerate() {
            ranks[p] = k as f32;
        }
        let greedy = Dream::default();
        let mut rng = Rng::seed(0);
        assert_eq!(
            step_commits(&greedy, 0, &ts, &masked, &ranks, &mut rng),
            vec![8, 9]
        );
        assert_eq!(
            step_commits(&greedy, 3, &ts, &masked, &ranks, &mut rng).len(),
            8
        );
        // alg_temp: seeded draws of the scheduled count, favouring high confidence.
        let hot = Dream {
            alg_temp: Some(0.5),
            ..greedy
        };
        let run = |seed| step_commits(&hot, 0, &ts, &masked, &ranks, &mut Rng::seed(seed));
        assert_eq!(run(3), run(3));
        let mut top = 0;
        for s in 0..200 {
            let c = run(s);
            assert_eq!(c.len(), 2);
            top += c.iter().filter(|&&p| p >= 8).count();
        }
        assert!(
            top > 200,
            "high-confidence positions drawn {top} of 400 times"
        );
        // origin: each position with probability 1 - s/t = 1/4 at step 0, all at the last.
        let origin = Dream {
            alg: Alg::Origin,
            ..greedy
        };
        let n: usize = (0..500)
            .map(|s| step_commits(&origin, 0, &ts, &masked, &ranks, &mut Rng::seed(s)).len())
            .sum();
        assert!((n as f64 / 4000.0 - 0.25).abs() < 0.03, "{n}");
        assert_eq!(
            step_commits(&origin, 3, &ts, &masked, &ranks, &mut rng).len(),
            8
        );
        assert!(Dream { eps: 1.0, ..greedy }.validate().is_err());
    }
}
