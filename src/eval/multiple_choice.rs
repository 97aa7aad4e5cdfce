//! Multiple-choice tasks (reference-semantics §3.1): HellaSwag, PIQA, WinoGrande, Social IQA.
//! Every choice is scored as an answer after its context; the lowest score wins.
//!
//! Two prompt formats:
//! * `Reference`: the strings of `eval-diffugpt.py`, with its tokenisation: context and answer are
//!   encoded separately and concatenated. Quirks kept: HellaSwag answers carry no leading space,
//!   PIQA's context ends in a space and its answer starts with one, WinoGrande encodes the option
//!   and the rest of the sentence separately and scores both (partial scoring, §3.1). LLaMA's
//!   extra `<s>` before HellaSwag/PIQA answers is not reproduced (dlm never adds BOS in encode).
//! * `LmEval`: lm-eval-harness 0-shot: `context + " " + answer`, encoded whole and split where
//!   the context's tokens end; WinoGrande scores only the rest of the sentence after the option.
//!
//! Scores: the reference estimator's mean CE, the ELBO's NLL bound, or the AR log-likelihood
//! (sum or mean over answer tokens). `acc_norm` divides an answer's total NLL by its length in
//! characters, as lm-eval does (for the reference estimator the total is score × tokens).

use serde_json::Value;

use super::score::{
    elbo_reduce, elbo_rows, llada_elbo_rows, mc_draws, mc_reduce, mc_rows, scorer_shift,
    target_logprobs, Attention, ScoreRow,
};
use crate::data::tokenizer::Tokenizer;
use crate::error::Result;
use crate::model::LanguageModel;
use crate::named::{display_and_from_str, Named};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McTask {
    Hellaswag,
    Piqa,
    Winogrande,
    Siqa,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptFormat {
    Reference,
    LmEval,
}

impl Named for PromptFormat {
    const WHAT: &'static str = "prompt format";
    const ALL: &'static [Self] = &[Self::Reference, Self::LmEval];

    fn name(self) -> &'static str {
        match self {
            PromptFormat::Reference => "reference",
            PromptFormat::LmEval => "lm-eval",
        }
    }

    fn help(self) -> &'static str {
        match self {
            PromptFormat::Reference => "eval-diffugpt.py's strings, pieces encoded separately",
            PromptFormat::LmEval => "lm-eval-harness 0-shot: context + answer, encoded whole",
        }
    }
}
display_and_from_str!(PromptFormat);

/// One choice as text: context and the answer's pieces (the reference encodes each separately).
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceText {
    pub context: String,
    pub answer: Vec<String>,
}

/// One choice as tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub context: Vec<u32>,
    pub answer: Vec<u32>,
    /// Characters of the answer text (acc_norm's divisor).
    pub chars: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub choices: Vec<Choice>,
    pub label: usize,
}

/// lm-eval's HellaSwag `preprocess`: WikiHow's bracketed artefacts removed.
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    // re.sub("\\[.*?\\]", "", text): drop every shortest [...] span.
    while let Some(open) = rest.find('[') {
        match rest[open..].find(']') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize`: first character upper case, the rest lower case.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

fn field<'a>(r: &'a Value, k: &str) -> Option<&'a str> {
    r.get(k)?.as_str()
}

/// An integer label stored as a number or a string.
fn int_field(r: &Value, k: &str) -> Option<i64> {
    match r.get(k)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The choices' texts and the gold index of one record; None when the record is malformed.
pub fn question_text(
    task: McTask,
    r: &Value,
    format: PromptFormat,
) -> Option<(Vec<ChoiceText>, usize)> {
    let lm = format == PromptFormat::LmEval;
    let lead = if lm { " " } else { "" };
    let same_context = |context: String, answers: Vec<String>| -> Vec<ChoiceText> {
        answers
            .into_iter()
            .map(|a| ChoiceText {
                context: context.clone(),
                answer: vec![a],
            })
            .collect()
    };
    let (choices, label) = match task {
        McTask::Hellaswag => {
            let ctx = format!("{} {}", field(r, "ctx_a")?, capitalize(field(r, "ctx_b")?));
            let context = hellaswag_preprocess(&format!("{}: {ctx}", field(r, "activity_label")?));
            let endings: Vec<String> = r
                .get("endings")?
                .as_array()?
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(|e| format!("{lead}{}", hellaswag_preprocess(e)))
                })
                .collect::<Option<_>>()?;
            (same_context(context, endings), int_field(r, "label")?)
        }
        McTask::Piqa => {
            let goal = field(r, "goal")?;
            let context = if lm {
                format!("Question: {goal}\nAnswer:")
            } else {
                format!("Question: {goal}\nAnswer: ")
            };
            let sols = vec![
                format!(" {}", field(r, "sol1")?),
                format!(" {}", field(r, "sol2")?),
            ];
            (same_context(context, sols), int_field(r, "label")?)
        }
        McTask::Siqa => {
            let (c, q) = (field(r, "context")?, field(r, "question")?);
            let context = if lm {
                format!("Q: {c} {q}\nA:")
            } else {
                format!("Question: {c} {q}\nAnswer: ")
            };
            let answers = ["answerA", "answerB", "answerC"]
                .iter()
                .map(|k| field(r, k).map(|a| format!("{lead}{a}")))
                .collect::<Option<Vec<_>>>()?;
            (same_context(context, answers), int_field(r, "label")? - 1)
        }
        McTask::Winogrande => {
            let sentence = field(r, "sentence")?;
            let idx = sentence.find('_')?;
            let suffix = sentence[idx + 1..].trim();
            let options = [field(r, "option1")?, field(r, "option2")?];
            let choices = options
                .iter()
                .map(|opt| {
                    if lm {
                        ChoiceText {
                            context: format!("{}{opt}", &sentence[..idx]),
                            answer: vec![format!(" {suffix}")],
                        }
                    } else {
                        ChoiceText {
                            context: sentence[..idx].to_string(),
                            answer: vec![opt.to_string(), suffix.to_string()],
                        }
                    }
                })
                .collect();
            (choices, int_field(r, "answer")? - 1)
        }
    };
    let label = usize::try_from(label).ok().filter(|&l| l < choices.len())?;
    Some((choices, label))
}

/// Tokenises one choice. Reference: pieces encoded separately. lm-eval: `context + answer`
/// encoded whole, trailing context spaces moved to the answer, split after the context's tokens.
pub fn tokenize_choice(c: &ChoiceText, format: PromptFormat, tok: &Tokenizer) -> Result<Choice> {
    let answer_text = c.answer.concat();
    let chars = answer_text.chars().count();
    if format == PromptFormat::Reference {
        let mut answer = Vec::new();
        for piece in &c.answer {
            answer.extend(tok.encode(piece)?);
        }
        return Ok(Choice {
            context: tok.encode(&c.context)?,
            answer,
            chars,
        });
    }
    let context = c.context.trim_end_matches(' ');
    let moved = &c.context[context.len()..];
    let whole = tok.encode(&format!("{context}{moved}{answer_text}"))?;
    let context_ids = tok.encode(context)?;
    let split = context_ids.len().min(whole.len());
    Ok(Choice {
        context: whole[..split].to_vec(),
        answer: whole[split..].to_vec(),
        chars,
    })
}

/// How choices are scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimator {
    /// §3.1: T-point grid over t, one mask per t, unweighted mean CE.
    Reference { steps: usize },
    /// t ~ U(0, 1), 1/t weight, `samples` draws.
    Elbo { samples: usize },
    /// LLaDA's `get_log_likelihood`: stratified mask counts, no shift, `mc_num` rows in batches
    /// of `batch`, classifier-free guidance `cfg` (0: none) (`llada_elbo_rows`).
    LladaElbo {
        mc_num: usize,
        batch: usize,
        cfg: f32,
    },
    /// Causal log-likelihood, summed or averaged over answer tokens.
    Ar { mean: bool },
}

/// The scores of one question's choices (lower is better) and its predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub scores: Vec<f64>,
    /// Total NLL per answer character.
    pub norm_scores: Vec<f64>,
    pub correct: bool,
    pub correct_norm: bool,
}

fn argmin(v: &[f64]) -> usize {
    let lower = |best: (usize, f64), (i, &x): (usize, &f64)| if x < best.1 { (i, x) } else { best };
    v.iter().enumerate().fold((0, f64::INFINITY), lower).0
}

/// Scores every choice of `q` in as few forwards as the lengths allow.
pub fn score_question(
    model: &dyn LanguageModel,
    q: &Question,
    est: Estimator,
    mask_id: u32,
    rng: &mut Rng,
    device: &candle_core::Device,
) -> Result<Outcome> {
    let seqs: Vec<(Vec<u32>, Vec<bool>)> = q
        .choices
        .iter()
        .map(|c| {
            let ids = [c.context.clone(), c.answer.clone()].concat();
            let mut src = vec![true; c.context.len()];
            src.resize(ids.len(), false);
            (ids, src)
        })
        .collect();
    // (per choice: a total NLL and the score argmin'd for `acc`)
    let totals: Vec<(f64, f64)> = match est {
        Estimator::Ar { mean } => {
            let rows: Vec<ScoreRow> = q
                .choices
                .iter()
                .zip(&seqs)
                .map(|(c, (ids, _))| ScoreRow::autoregressive(ids.clone(), c.context.len()))
                .collect();
            let lp = target_logprobs(model, &rows, Attention::Autoregressive, device)?;
            lp.iter()
                .map(|lp| {
                    let nll = -lp.iter().map(|&x| x as f64).sum::<f64>();
                    let key = if mean {
                        nll / lp.len().max(1) as f64
                    } else {
                        nll
                    };
                    (nll, key)
                })
                .collect()
        }
        Estimator::Reference { steps } => {
            let mut rows = Vec::new();
            for (ids, src) in &seqs {
                let draws = mc_draws(steps, ids.len(), rng);
                rows.extend(mc_rows(ids, src, mask_id, &draws, scorer_shift(model)));
            }
            let lp = target_logprobs(model, &rows, Attention::Diffusion, device)?;
            lp.chunks(steps)
                .zip(&q.choices)
                .map(|(lp, c)| {
                    let score = mc_reduce(lp).1 as f64;
                    (score * c.answer.len() as f64, score)
                })
                .collect()
        }
        Estimator::Elbo { samples: n } | Estimator::LladaElbo { mc_num: n, .. } => {
            // (t or mask ratio, row): n per choice, reduced alike.
            let (times, rows): (Vec<f32>, Vec<ScoreRow>) = seqs
                .iter()
                .flat_map(|(ids, src)| match est {
                    Estimator::LladaElbo { batch, cfg, .. } => {
                        let prompt = src.iter().filter(|&&s| s).count();
                        llada_elbo_rows(ids, prompt, mask_id, n, batch, cfg, rng)
                    }
                    _ => elbo_rows(ids, src, mask_id, n, scorer_shift(model), rng),
                })
                .unzip();
            let lp = target_logprobs(model, &rows, Attention::Diffusion, device)?;
            let chunks = lp.chunks(n.max(1)).zip(times.chunks(n.max(1)));
            chunks
                .map(|(lp, t)| elbo_reduce(t, lp))
                .map(|nll| (nll, nll))
                .collect()
        }
    };
    let scores: Vec<f64> = totals.iter().map(|t| t.1).collect();
    let norm_scores: Vec<f64> = totals
        .iter()
        .zip(&q.choices)
        .map(|(t, c)| t.0 / c.chars.max(1) as f64)
        .collect();
    Ok(Outcome {
        correct: argmin(&scores) == q.label,
        correct_norm: argmin(&norm_scores) == q.label,
        scores,
        norm_scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hellaswag_text_as_lm_eval_preprocesses_it() {
        assert_eq!(
            hellaswag_preprocess(" How to cook [title] Boil water. [step] Stir  it "),
            "How to cook. Boil water. Stir it"
        );
        assert_eq!(capitalize("the DOG runs"), "The dog runs");
    }

    #[test]
    fn formats_and_malformed_records() {
        let r = json!({"sentence": "The cup fell because _ was slippery.",
                       "option1": "it", "option2": "the table", "answer": "2"});
        let (c, label) = question_text(McTask::Winogrande, &r, PromptFormat::Reference).unwrap();
        assert_eq!(label, 1);
        assert_eq!(c[1].context, "The cup fell because ");
        assert_eq!(c[1].answer, vec!["the table", "was slippery."]);
        let (c, _) = question_text(McTask::Winogrande, &r, PromptFormat::LmEval).unwrap();
        assert_eq!(c[0].context, "The cup fell because it");
        assert_eq!(c[0].answer, vec![" was slippery."]);
        let p = json!({"goal": "g", "sol1": "a", "sol2": "b", "label": 1});
        let (c, label) = question_text(McTask::Piqa, &p, PromptFormat::Reference).unwrap();
        assert_eq!((c[0].context.as_str(), label), ("Question: g\nAnswer: ", 1));
        let bad_label = json!({"goal": "g", "sol1": "a", "sol2": "b", "label": 2});
        assert!(question_text(McTask::Piqa, &bad_label, PromptFormat::Reference).is_none());
        let missing = json!({"context": "c", "question": "q", "answerA": "a", "label": "1"});
        assert!(question_text(McTask::Siqa, &missing, PromptFormat::Reference).is_none());
    }

    #[test]
    fn argmin_takes_the_first_of_ties() {
        assert_eq!(argmin(&[2.0, 1.0, 1.0]), 1);
        assert_eq!(argmin(&[f64::NAN, 3.0]), 1);
    }
}
