//! Runs one task over its records: build items (skipping and counting malformed ones), score or
//! generate each with a progress bar, aggregate the metrics. Every example draws from its own
//! RNG, seeded from `--seed` and its index, so results do not depend on `--limit` or order.

use std::time::Instant;

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::generation::{fill, gen_item, score, GenSettings, GenTask};
use super::multiple_choice::{
    question_text, score_question, tokenize_choice, Estimator, PromptFormat, Question,
};
use super::results::{MetricValues, TaskResult};
use super::tasks::{TaskKind, TaskSpec};
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, OptionMessage, Result};
use crate::model::LanguageModel;
use crate::rng::Rng;

/// Settings shared by every task of one `dlm eval` run.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// Score and generate as an AR model (causal attention).
    pub ar: bool,
    /// Multiple-choice estimator (ignored by generation tasks).
    pub estimator: Estimator,
    pub format: PromptFormat,
    pub gen: GenSettings,
    pub limit: Option<usize>,
    pub seed: u64,
    pub show_progress: bool,
}

/// The RNG of example `index`.
pub fn example_rng(seed: u64, index: usize) -> Rng {
    Rng::seed(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn progress_bar(task: &str, total: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} {bar:30} {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(task.to_string());
    bar
}

/// What the model is, for the tasks.
pub struct EvalModel<'a> {
    pub model: &'a dyn LanguageModel,
    pub tokenizer: &'a Tokenizer,
    /// Needed in DLM mode.
    pub mask_id: Option<u32>,
    /// The end-of-text ids that end a GSM8K answer.
    pub stop_ids: Vec<u32>,
    pub device: &'a Device,
}

/// Runs `spec` over `records` (already read). `model_name` and `data` label the result.
pub fn run_task(
    m: &EvalModel,
    spec: &TaskSpec,
    records: &[Value],
    s: &EvalSettings,
    labels: (&str, &str),
) -> Result<TaskResult> {
    let started = Instant::now();
    let mask_id = match (s.ar, m.mask_id) {
        (true, _) => 0,
        (false, Some(id)) => id,
        (false, None) => {
            return Err(Error::InvalidOption(
                OptionMessage::default()
                    .text("the model has no mask_token_id in its config.json: set ")
                    .setting("ar")
                    .text(" to evaluate it as an AR model, or ")
                    .setting("mask_id")
                    .text(" for a diffusion model"),
            ))
        }
    };
    let limit = s.limit.or(spec.default_limit).unwrap_or(usize::MAX);
    let records = &records[..records.len().min(limit)];
    let bar = progress_bar(spec.name, records.len(), s.show_progress);
    let mut values = MetricValues::default();
    let mut skipped = 0;
    let mut n = 0;
    let max_len = m.model.config().max_position_embeddings;
    for (index, record) in records.iter().enumerate() {
        let mut rng = example_rng(s.seed, index);
        let scored = match spec.kind {
            TaskKind::MultipleChoice(task) => {
                let Some(q) = question(task, record, s.format, m.tokenizer, max_len)? else {
                    skipped += 1;
                    bar.inc(1);
                    continue;
                };
                let est = if s.ar {
                    match s.estimator {
                        Estimator::Ar { .. } => s.estimator,
                        _ => Estimator::Ar { mean: true },
                    }
                } else {
                    s.estimator
                };
                let o = score_question(m.model, &q, est, mask_id, &mut rng, m.device)?;
                values.push("acc", f64::from(u8::from(o.correct)));
                values.push("acc_norm", f64::from(u8::from(o.correct_norm)));
                true
            }
            TaskKind::Generation(task) => {
                let mut g = s.gen.clone();
                g.max_len = max_len;
                match gen_item(task, record, m.tokenizer, &g)? {
                    None => false,
                    Some(item) => {
                        let stop: &[u32] = if task == GenTask::Gsm8k {
                            &m.stop_ids
                        } else {
                            &[]
                        };
                        let out = fill(m.model, &item, s.ar, mask_id, stop, &mut rng, m.device)?;
                        for (k, v) in score(&item.gold, &out, m.tokenizer, stop) {
                            values.push(k, v);
                        }
                        true
                    }
                }
            }
        };
        if scored {
            n += 1;
        } else {
            skipped += 1;
        }
        bar.inc(1);
        if let Some((name, v)) = values.summary().iter().next() {
            bar.set_message(format!("{name} {:.3}", v.mean));
        }
    }
    bar.finish_and_clear();
    Ok(TaskResult {
        task: spec.name.to_string(),
        model: labels.0.to_string(),
        mode: if s.ar { "ar" } else { "dlm" }.into(),
        estimator: estimator_name(spec, s),
        steps: steps_label(spec, s),
        samples: match (spec.kind, s.estimator, s.ar) {
            (TaskKind::MultipleChoice(_), Estimator::Elbo { samples }, false) => Some(samples),
            (TaskKind::MultipleChoice(_), Estimator::LladaElbo { mc_num, .. }, false) => {
                Some(mc_num)
            }
            _ => None,
        },
        format: matches!(spec.kind, TaskKind::MultipleChoice(_)).then(|| s.format.to_string()),
        seed: s.seed,
        n,
        skipped,
        data: labels.1.to_string(),
        metrics: values.summary(),
        wall_s: started.elapsed().as_secs_f64(),
    })
}

fn question(
    task: super::multiple_choice::McTask,
    record: &Value,
    format: PromptFormat,
    tok: &Tokenizer,
    max_len: usize,
) -> Result<Option<Question>> {
    let Some((texts, label)) = question_text(task, record, format) else {
        return Ok(None);
    };
    let choices = texts
        .iter()
        .map(|c| tokenize_choice(c, format, tok))
        .collect::<Result<Vec<_>>>()?;
    let usable = choices
        .iter()
        .all(|c| !c.answer.is_empty() && c.context.len() + c.answer.len() <= max_len);
    Ok(usable.then_some(Question { choices, label }))
}

fn estimator_name(spec: &TaskSpec, s: &EvalSettings) -> String {
    match (spec.kind, s.ar, s.estimator) {
        (TaskKind::MultipleChoice(_), true, Estimator::Ar { mean: false }) => "ar-sum".into(),
        (TaskKind::MultipleChoice(_), true, _) => "ar-mean".into(),
        (TaskKind::MultipleChoice(_), false, Estimator::Elbo { .. }) => "elbo".into(),
        (TaskKind::MultipleChoice(_), false, Estimator::LladaElbo { cfg, .. }) if cfg > 0.0 => {
            format!("llada-elbo-cfg{cfg}")
        }
        (TaskKind::MultipleChoice(_), false, Estimator::LladaElbo { .. }) => "llada-elbo".into(),
        (TaskKind::MultipleChoice(_), false, _) => "reference".into(),
        (TaskKind::Generation(_), true, _) => "greedy".into(),
        (TaskKind::Generation(_), false, _) => "topk-confidence".into(),
    }
}

fn steps_label(spec: &TaskSpec, s: &EvalSettings) -> Value {
    if s.ar {
        return Value::Null;
    }
    match (spec.kind, s.estimator) {
        (TaskKind::MultipleChoice(_), Estimator::Reference { steps }) => steps.into(),
        (TaskKind::MultipleChoice(_), _) => Value::Null,
        (TaskKind::Generation(GenTask::Lambada | GenTask::Triviaqa | GenTask::TextInfill), _) => {
            "hole".into()
        }
        (TaskKind::Generation(GenTask::SatMath), _) => 4.into(),
        (TaskKind::Generation(GenTask::Gsm8k), _) => s.gen.steps.unwrap_or(64).into(),
        (TaskKind::Generation(_), _) => s.gen.steps.unwrap_or(32).into(),
    }
}
