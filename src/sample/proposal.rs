//! A step's proposals: for every wanted position, a token drawn from its logits row, that token's
//! log-probability after temperature, and the score a ranking rule sorts by. The families' own
//! samplers propose as their references do (`llada`, `dream`).

use rayon::prelude::*;

use super::dream::Dream;
use super::filter::{choose, TokenChoice};
use super::head_rows::{HeadOutput, HeadValues, ProposalRow};
use super::llada::Llada;
use super::unmask::{distribution_score, Rule};
use super::{dream, llada};
use crate::error::Result;
use crate::ops::Greedy;
use crate::rng::Rng;

/// How a logits row becomes a proposal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Proposer {
    /// dlm's token choice, ranked by `rule` (log-probability without one).
    Choice(TokenChoice, Option<Rule>),
    /// LLaDA's `generate()`: Gumbel-max or argmax, ranked by `remasking`.
    Llada { temperature: f32, llada: Llada },
    /// Dream's `sample_tokens`, ranked by its `alg`.
    Dream { temperature: f32, dream: Dream },
}

impl Proposer {
    /// Whether each row's greedy choice (token and log-probability) is all a proposal needs, so
    /// the head need not write the logits.
    pub fn greedy_rows_suffice(self) -> bool {
        match self {
            Proposer::Choice(choice, rule) => {
                choice == TokenChoice::Greedy && !rule.is_some_and(|r| r.needs_distribution())
            }
            Proposer::Llada { temperature, llada } => temperature <= 0.0 && !llada.eos.any(),
            Proposer::Dream { temperature, dream } => dream.greedy_rows_suffice(temperature),
        }
    }

    /// The proposal of one logits row.
    fn pick(self, logits: &[f32], rng: &mut Rng) -> Pick {
        match self {
            Proposer::Choice(choice, rule) => pick(logits, choice, rule, rng),
            Proposer::Llada { temperature, llada } => llada::pick(logits, temperature, &llada, rng),
            Proposer::Dream { temperature, dream } => dream::pick(logits, temperature, &dream, rng),
        }
    }

    /// The proposal of a row's greedy choice (when `greedy_rows_suffice`).
    fn pick_greedy(self, g: Greedy, rng: &mut Rng) -> Pick {
        match self {
            Proposer::Choice(_, rule) => propose(g.token, g.logprob, rule, rng),
            Proposer::Llada { llada, .. } => llada::pick_greedy(g, llada.remasking, rng),
            Proposer::Dream { .. } => dream::pick_greedy(g),
        }
    }
}

/// One proposal: the token, its log-probability after temperature, and its rank score.
pub struct Pick {
    pub token: u32,
    pub logprob: f32,
    pub rank: f32,
}

/// The proposals of `wanted`, in order, each drawn with its own generator seeded by `seeds`, so
/// the draws do not depend on the order the rows are processed in.
pub fn propose_rows(
    head: &HeadOutput,
    wanted: &[ProposalRow],
    seeds: &[u64],
    proposer: Proposer,
) -> Result<Vec<Pick>> {
    let index: Vec<usize> = wanted
        .iter()
        .map(|p| head.index(p.row))
        .collect::<Result<_>>()?;
    Ok(match &head.values {
        HeadValues::Greedy(rows) => index
            .iter()
            .zip(seeds)
            .map(|(&k, &seed)| proposer.pick_greedy(rows[k], &mut Rng::seed(seed)))
            .collect(),
        // Borrowed in place on the CPU: the full-logits path would otherwise copy B·L·V floats.
        HeadValues::Logits(logits) => {
            let vocab = logits.dim(1)?;
            crate::ops::cpu::with_data(logits, |data| {
                Ok(index
                    .par_iter()
                    .zip(seeds)
                    .map(|(&k, &seed)| {
                        let row = &data[k * vocab..(k + 1) * vocab];
                        proposer.pick(row, &mut Rng::seed(seed))
                    })
                    .collect())
            })?
        }
    })
}

/// The proposal of one logits row.
fn pick(logits: &[f32], choice: TokenChoice, rule: Option<Rule>, rng: &mut Rng) -> Pick {
    let (token, logprob) = choose(logits, choice, rng);
    match rule {
        Some(r) if r.needs_distribution() => {
            let rank = match choice {
                TokenChoice::Sample { temperature, .. } => {
                    let t: Vec<f32> = logits.iter().map(|x| x / temperature).collect();
                    distribution_score(r, &t)
                }
                TokenChoice::Greedy => distribution_score(r, logits),
            };
            Pick {
                token,
                logprob,
                rank,
            }
        }
        _ => propose(token, logprob, rule, rng),
    }
}

/// A proposal ranked by its log-probability, or at random under `Rule::Random`.
fn propose(token: u32, logprob: f32, rule: Option<Rule>, rng: &mut Rng) -> Pick {
    let rank = match rule {
        Some(Rule::Random) => rng.uniform_f32(),
        _ => logprob,
    };
    Pick {
        token,
        logprob,
        rank,
    }
}
