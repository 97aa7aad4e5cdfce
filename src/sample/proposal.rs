//! A step's proposals: for every wanted position, a token drawn from its logits row, that token's
//! log-probability after temperature, and the score a ranking rule sorts by.

use rayon::prelude::*;

use super::filter::{choose, TokenChoice};
use super::head_rows::{HeadOutput, HeadValues, ProposalRow};
use super::unmask::{distribution_score, Rule};
use crate::error::Result;
use crate::rng::Rng;

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
    choice: TokenChoice,
    rule: Option<Rule>,
) -> Result<Vec<Pick>> {
    let index: Vec<usize> = wanted
        .iter()
        .map(|p| head.index(p.row))
        .collect::<Result<_>>()?;
    Ok(match &head.values {
        HeadValues::Greedy(rows) => index
            .iter()
            .zip(seeds)
            .map(|(&k, &seed)| propose(rows[k].token, rows[k].logprob, rule, &mut Rng::seed(seed)))
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
                        pick(row, choice, rule, &mut Rng::seed(seed))
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
