//! Generation tasks (reference-semantics §3.2–3.6): a hole of a known token count after a prefix
//! (and, for infilling, before a suffix). A DLM fills it with the top-k-confidence sampler of
//! the eval scripts (§2.2); an AR model decodes greedily from the prefix alone, cut at the same
//! length (the paper's prefix-only AR rows).
//!
//! | task | hole | T | choice | metric |
//! |---|---|---|---|---|
//! | lambada | oracle tokens of the last word | = hole | sample, temperature 1 | exact word |
//! | triviaqa | oracle answer tokens + 10 | = hole | temperature | contains (reference), F1 |
//! | gsm8k | SFT canvas up to 256 | 64 | argmax | number after `####` |
//! | sat-math | 4 tokens after "The answer is (" | 4 | temperature | choice letter |
//! | rocstories | oracle tokens of s3 | 32 | temperature | ROUGE-1/2/L |
//! | code-infill | oracle tokens of the line | 32 | temperature | pass@1 |
//! | infill | oracle tokens of `middle` | = hole | argmax | exact span, tokens in place |
//!
//! `infill` is dlm's own task (not the paper's): records `{"prefix", "middle", "suffix"}` of any
//! text, e.g. held-out lines with a word or span removed (`examples/make_infill_eval.rs`); an
//! empty `suffix` measures the DLM with the suffix withheld.

use serde_json::Value;

use super::code_exec::{passes, Program};
use super::metrics::{contains_match, gsm_answer, rouge, token_f1};
use crate::data::sft::SftFormat;
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::model::LanguageModel;
use crate::rng::Rng;
use crate::sample::autoregressive::{generate, ArOptions};
use crate::sample::canvas::Canvas;
use crate::sample::denoise::Denoiser;
use crate::sample::family::family_sampler;
use crate::sample::filter::TokenChoice;
use crate::sample::head_rows::HeadRows;
use crate::sample::options::DiffusionOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenTask {
    Lambada,
    Triviaqa,
    Gsm8k,
    SatMath,
    Rocstories,
    CodeInfill,
    TextInfill,
}

/// What a prediction is checked against.
#[derive(Debug, Clone, PartialEq)]
pub enum Gold {
    Word(String),
    /// A removed span: its text, and its tokens for the share restored in place.
    Span(String, Vec<u32>),
    Aliases(Vec<String>),
    Number(String),
    Letter(char),
    Text(String),
    Code(Program),
}

/// One problem: `prefix`, a hole of `length` tokens, `suffix`; T forwards for a DLM.
#[derive(Debug, Clone, PartialEq)]
pub struct GenItem {
    pub prefix: Vec<u32>,
    pub length: usize,
    pub suffix: Vec<u32>,
    pub steps: usize,
    pub gold: Gold,
    /// Reference's per-task decoding: Some(temperature) samples, None is argmax.
    pub temperature: Option<f32>,
}

/// Settings a task's items depend on.
#[derive(Debug, Clone)]
pub struct GenSettings {
    /// T for the tasks with a fixed T (ROCStories, code infilling, GSM8K); None: the default.
    pub steps: Option<usize>,
    /// Sampling temperature for the tasks that sample; None: the reference's 0.95.
    pub temperature: Option<f32>,
    /// BOS/SEP/EOS/pad of SFT prompts (GSM8K).
    pub sft: Option<SftFormat>,
    /// Longest canvas the model accepts.
    pub max_len: usize,
}

fn field<'a>(r: &'a Value, k: &str) -> Option<&'a str> {
    r.get(k)?.as_str()
}

/// Builds the item of one record; Ok(None) when the record is malformed or does not fit.
pub fn gen_item(
    task: GenTask,
    r: &Value,
    tok: &Tokenizer,
    s: &GenSettings,
) -> Result<Option<GenItem>> {
    let temp = Some(s.temperature.unwrap_or(0.95));
    let item = match task {
        GenTask::Lambada => {
            // §3.2: the hole is the oracle length of the last word; fixed tokens come from x0.
            let line = field(r, "text").unwrap_or("").trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some((last, head)) = words.split_last() else {
                return Ok(None);
            };
            let x0 = tok.encode(line)?;
            let n_prefix = tok.encode(&head.join(" "))?.len();
            if n_prefix == 0 || n_prefix >= x0.len() {
                return Ok(None);
            }
            let length = x0.len() - n_prefix;
            GenItem {
                prefix: x0[..n_prefix].to_vec(),
                length,
                suffix: vec![],
                steps: length,
                gold: Gold::Word(last.to_string()),
                temperature: Some(s.temperature.unwrap_or(1.0)),
            }
        }
        GenTask::Triviaqa => {
            let Some(q) = field(r, "question") else {
                return Ok(None);
            };
            let answer = r.get("answer");
            let Some(value) = answer.and_then(|a| field(a, "value")) else {
                return Ok(None);
            };
            let mut aliases: Vec<String> = answer
                .and_then(|a| a.get("aliases"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            aliases.push(value.to_string());
            let length = tok.encode(&format!(" {value}"))?.len() + 10;
            GenItem {
                prefix: tok.encode(&format!("Question: {q}\nAnswer:"))?,
                length,
                suffix: vec![],
                steps: length,
                gold: Gold::Aliases(aliases),
                temperature: temp,
            }
        }
        GenTask::Gsm8k => {
            let (Some(q), Some(out)) = (field(r, "instruction"), field(r, "output")) else {
                return Ok(None);
            };
            let Some(answer) = gsm_answer(out) else {
                return Ok(None);
            };
            let f = s.sft.ok_or_else(|| {
                Error::Input("gsm8k needs the model's SFT tokens (bos/sep/eos/pad)".into())
            })?;
            let mut prefix = vec![f.bos];
            prefix.extend(tok.encode(q)?);
            prefix.push(f.sep);
            let Some(length) = f.cutoff_len.checked_sub(prefix.len()).filter(|&n| n > 0) else {
                return Ok(None);
            };
            GenItem {
                prefix,
                length,
                suffix: vec![],
                steps: s.steps.unwrap_or(64),
                gold: Gold::Number(answer),
                temperature: None,
            }
        }
        GenTask::SatMath => {
            let (Some(q), Some(label)) = (field(r, "question"), field(r, "label")) else {
                return Ok(None);
            };
            let Some(options) = r.get("options").and_then(Value::as_array) else {
                return Ok(None);
            };
            let options: Vec<&str> = options.iter().filter_map(Value::as_str).collect();
            let Some(letter) = label.trim().chars().next().filter(char::is_ascii_uppercase) else {
                return Ok(None);
            };
            let passage = field(r, "passage").unwrap_or("");
            let prompt = format!(
                "{passage}{}Question: {q}\nOptions: {}\nAnswer: The answer is (",
                if passage.is_empty() { "" } else { "\n" },
                options.join(" ")
            );
            GenItem {
                prefix: tok.encode(&prompt)?,
                length: 4,
                suffix: vec![],
                steps: 4,
                gold: Gold::Letter(letter),
                temperature: temp,
            }
        }
        GenTask::Rocstories => {
            // §3.4: sentences 1–4 plus the right ending; prefix s1 s2, hole s3, suffix s4 s5.
            let get = |k: &str| field(r, k).map(str::trim);
            let right = match get("AnswerRightEnding") {
                Some("1") => get("RandomFifthSentenceQuiz1"),
                Some("2") => get("RandomFifthSentenceQuiz2"),
                _ => None,
            };
            let s_opt: Option<Vec<&str>> = (1..=4)
                .map(|i| get(&format!("InputSentence{i}")))
                .chain([right])
                .collect();
            let Some(sents) = s_opt else { return Ok(None) };
            let middle = tok.encode(sents[2])?;
            if middle.is_empty() {
                return Ok(None);
            }
            GenItem {
                prefix: tok.encode(&format!("{} {}", sents[0], sents[1]))?,
                length: middle.len(),
                suffix: tok.encode(&format!("{} {}", sents[3], sents[4]))?,
                steps: s.steps.unwrap_or(32),
                gold: Gold::Text(sents[2].to_string()),
                temperature: temp,
            }
        }
        GenTask::CodeInfill => {
            let Some(program) = Program::from_record(r) else {
                return Ok(None);
            };
            let middle = tok.encode(&program.canonical_solution)?;
            let prefix = tok.encode(&program.prompt)?;
            let suffix = tok.encode(&program.suffix)?;
            // §3.5: the reference skips tasks over 1000 tokens.
            if middle.is_empty() || prefix.len() + middle.len() + suffix.len() > 1000 {
                return Ok(None);
            }
            GenItem {
                prefix,
                length: middle.len(),
                suffix,
                steps: s.steps.unwrap_or(32),
                gold: Gold::Code(program),
                temperature: temp,
            }
        }
        GenTask::TextInfill => {
            let (Some(prefix), Some(middle)) = (field(r, "prefix"), field(r, "middle")) else {
                return Ok(None);
            };
            let hole = tok.encode(middle)?;
            if hole.is_empty() {
                return Ok(None);
            }
            GenItem {
                prefix: tok.encode(prefix)?,
                length: hole.len(),
                suffix: tok.encode(field(r, "suffix").unwrap_or(""))?,
                steps: hole.len(),
                gold: Gold::Span(middle.to_string(), hole),
                temperature: None,
            }
        }
    };
    let total = item.prefix.len() + item.length + item.suffix.len();
    Ok((total <= s.max_len && !item.prefix.is_empty()).then_some(item))
}

/// The hole's tokens: DLM by diffusion (prefix and suffix fixed), AR greedily from the prefix.
pub fn fill(
    model: &dyn LanguageModel,
    item: &GenItem,
    ar: bool,
    mask_id: u32,
    stop_ids: &[u32],
    rng: &mut Rng,
    device: &candle_core::Device,
) -> Result<Vec<u32>> {
    if ar {
        let opts = ArOptions {
            max_new_tokens: item.length,
            choice: TokenChoice::Greedy,
            stop_ids: stop_ids.to_vec(),
        };
        return generate(model, &item.prefix, &opts, rng, device, |_| {});
    }
    let mut canvas = [Canvas::infill(
        &item.prefix,
        item.length,
        &item.suffix,
        mask_id,
    )?];
    let choice = match item.temperature {
        Some(t) if t > 0.0 => TokenChoice::Sample {
            temperature: t,
            top_k: None,
            top_p: None,
        },
        _ => TokenChoice::Greedy,
    };
    let opts = DiffusionOptions {
        choice,
        // The row that scores each token is the model family's (LLaDA: the same position).
        shift: family_sampler(model.config().arch).1,
        // Same canvases as the all-rows path for argmax, and an equally distributed sample.
        head_rows: HeadRows::Needed,
        ..DiffusionOptions::reference(item.steps)
    };
    let denoiser = Denoiser {
        model,
        device,
        opts: &opts,
    };
    denoiser.sample(&mut canvas, rng, &mut |_| {})?;
    let start = item.prefix.len();
    Ok(canvas[0].ids[start..start + item.length].to_vec())
}

/// Metric values of one prediction, by name.
pub fn score(
    gold: &Gold,
    tokens: &[u32],
    tok: &Tokenizer,
    stop_ids: &[u32],
) -> Vec<(&'static str, f64)> {
    let cut = tokens
        .iter()
        .position(|t| stop_ids.contains(t))
        .unwrap_or(tokens.len());
    let text = tok.decode(&tokens[..cut]).unwrap_or_default();
    let bool01 = |b: bool| f64::from(u8::from(b));
    match gold {
        Gold::Word(w) => vec![("acc", bool01(text.trim() == w.trim()))],
        Gold::Span(w, gold) => {
            // Exact span, and (where exact matches are rare, as for whole spans on a small
            // model) the share of its tokens restored at their own positions.
            let in_place = gold.iter().zip(tokens).filter(|(g, t)| g == t).count();
            vec![
                ("acc", bool01(text.trim() == w.trim())),
                ("token_acc", in_place as f64 / gold.len() as f64),
            ]
        }
        Gold::Aliases(aliases) => {
            // The answer is the first line; the hole's extra tokens run on past it.
            let answer = text.trim().lines().next().unwrap_or("").trim();
            let em = aliases.iter().any(|a| contains_match(answer, a));
            let f1 = aliases
                .iter()
                .map(|a| token_f1(answer, a))
                .fold(0.0, f64::max);
            vec![("em", bool01(em)), ("f1", f1)]
        }
        Gold::Number(n) => {
            let got = gsm_answer(&text);
            vec![("acc", bool01(got.as_deref() == Some(n.as_str())))]
        }
        Gold::Letter(l) => {
            let got = text.chars().find(|c| ('A'..='E').contains(c));
            vec![("acc", bool01(got == Some(*l)))]
        }
        Gold::Text(reference) => {
            let r = rouge(&text, reference);
            vec![
                ("rouge1", 100.0 * r.rouge1),
                ("rouge2", 100.0 * r.rouge2),
                ("rougeL", 100.0 * r.rouge_l),
            ]
        }
        Gold::Code(program) => vec![("pass@1", bool01(passes(program, &text)))],
    }
}
