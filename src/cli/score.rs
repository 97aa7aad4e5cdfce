//! `dlm score MODEL_DIR`: logits summaries per position and the shifted (AR) log-likelihood of a
//! sequence under a chosen attention. This is the scripting surface that tests, benchmarks and
//! external checks reuse; its JSON schema is documented in the README ("dlm score").

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};

use super::args::{load_model, load_model_for_inference, RuntimeArgs};
use crate::data::tokenizer::Tokenizer;
use crate::diffusion::anneal::annealed_mask;
use crate::diffusion::shift::Shift;
use crate::ops::AttentionMask;
use crate::rng::Rng;
use crate::sample::filter::log_softmax;

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// HF-layout model directory.
    pub model: PathBuf,
    /// Text to score (tokenised with the model's tokenizer, no special tokens added).
    #[arg(long, conflicts_with_all = ["ids", "request"])]
    pub text: Option<String>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', conflicts_with = "request")]
    pub ids: Option<Vec<u32>>,
    /// A JSON request file (`-` for stdin); see the README for its schema.
    #[arg(long)]
    pub request: Option<PathBuf>,
    /// causal, bidirectional, or annealed:RATIO (causal OR Bernoulli(RATIO) per entry).
    #[arg(long)]
    pub attention: Option<String>,
    /// Seed of the annealing draw.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Include the full logits matrix in the JSON.
    #[arg(long)]
    pub full: bool,
    /// How many top tokens to report per position.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The request schema; command-line flags override its fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreRequest {
    text: Option<String>,
    ids: Option<Vec<u32>>,
    /// "causal" | "bidirectional" | "annealed:R" | {"anneal_matrix": [[0|1]]} | {"allowed": [[0|1]]}
    attention: Option<Value>,
    seed: Option<u64>,
    full: Option<bool>,
}

fn matrix_rows(v: &Value, l: usize) -> anyhow::Result<Vec<bool>> {
    let rows = v
        .as_array()
        .context("attention matrix must be a list of rows")?;
    if rows.len() != l {
        bail!(
            "attention matrix has {} rows, the sequence has {l} positions",
            rows.len()
        );
    }
    let mut out = Vec::with_capacity(l * l);
    for (i, row) in rows.iter().enumerate() {
        let row = row
            .as_array()
            .with_context(|| format!("attention matrix row {i} is not a list"))?;
        if row.len() != l {
            bail!(
                "attention matrix row {i} has {} entries, expected {l}",
                row.len()
            );
        }
        for x in row {
            out.push(match x {
                Value::Bool(b) => *b,
                Value::Number(n) if n.as_f64() == Some(0.0) => false,
                Value::Number(n) if n.as_f64() == Some(1.0) => true,
                other => bail!("attention matrix entries must be 0/1, got {other}"),
            });
        }
    }
    Ok(out)
}

/// Resolves the attention argument into a mask for a sequence of `l` positions.
fn resolve_attention(
    spec: &Value,
    l: usize,
    seed: u64,
    device: &Device,
) -> anyhow::Result<(AttentionMask, String)> {
    if let Some(s) = spec.as_str() {
        return Ok(match s {
            "causal" => (AttentionMask::Causal, s.into()),
            "bidirectional" => (AttentionMask::Bidirectional, s.into()),
            _ => {
                let ratio: f64 = s
                    .strip_prefix("annealed:")
                    .and_then(|r| r.parse().ok())
                    .filter(|r| (0.0..=1.0).contains(r))
                    .with_context(|| format!("bad attention `{s}` (causal, bidirectional or annealed:RATIO with RATIO in [0, 1])"))?;
                (
                    annealed_mask(ratio, l, &mut Rng::seed(seed), device)?,
                    s.into(),
                )
            }
        });
    }
    if let Some(m) = spec.get("anneal_matrix") {
        let random = matrix_rows(m, l)?;
        let allowed: Vec<bool> = (0..l * l).map(|k| k % l <= k / l || random[k]).collect();
        return Ok((
            AttentionMask::from_allowed(&allowed, l, device)?,
            "anneal_matrix".into(),
        ));
    }
    if let Some(m) = spec.get("allowed") {
        return Ok((
            AttentionMask::from_allowed(&matrix_rows(m, l)?, l, device)?,
            "allowed".into(),
        ));
    }
    bail!("bad attention {spec}: expected a string, {{\"anneal_matrix\": …}} or {{\"allowed\": …}}")
}

pub fn run(a: ScoreArgs) -> anyhow::Result<()> {
    let raw: Option<Value> = match &a.request {
        Some(p) => {
            let text = if p.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
            };
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid JSON", p.display()))?,
            )
        }
        None => None,
    };
    // A request with `x0` asks for the training loss and its gradients.
    if let (Some(raw), Some(path)) = (&raw, &a.request) {
        if raw.get("x0").is_some() {
            let m = load_model(&a.model, &a.runtime)?;
            let device = a.runtime.device.open()?;
            let out = super::score_loss::run(raw.clone(), &m, &device, a.full, path)?;
            println!("{}", serde_json::to_string(&out)?);
            return Ok(());
        }
    }
    let mut req: ScoreRequest = match (raw, &a.request) {
        (Some(raw), Some(p)) => serde_json::from_value(raw)
            .with_context(|| format!("{}: bad score request", p.display()))?,
        _ => ScoreRequest::default(),
    };
    if a.text.is_some() {
        req.text = a.text.clone();
    }
    if a.ids.is_some() {
        req.ids = a.ids.clone();
    }
    let attention = a
        .attention
        .clone()
        .map(Value::String)
        .or(req.attention.take());
    let seed = a.seed.or(req.seed).unwrap_or(0);
    let full = a.full || req.full.unwrap_or(false);

    let m = load_model_for_inference(&a.model, &a.runtime)?;
    let device = a.runtime.device.open()?;
    let tokenizer = Tokenizer::from_model_dir(&a.model)?;
    let ids = match (&req.ids, &req.text) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => tokenizer
            .as_ref()
            .context("this model has no tokenizer.json; pass --ids")?
            .encode(text)?,
        (None, None) => bail!("nothing to score: pass --text, --ids or --request"),
    };
    if ids.is_empty() {
        bail!("nothing to score: the sequence is empty");
    }
    let l = ids.len();
    let spec = attention.context("pass --attention causal|bidirectional|annealed:RATIO")?;
    let (mask, attention_name) = resolve_attention(&spec, l, seed, &device)?;
    let input = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
    let logits = m
        .model
        .forward(&input, &mask)?
        .squeeze(0)?
        .to_dtype(DType::F32)?;
    let rows: Vec<Vec<f32>> = logits.to_vec2()?;

    let mut positions = Vec::with_capacity(l);
    let mut log_likelihood = 0.0f64;
    for (i, row) in rows.iter().enumerate() {
        let lp = log_softmax(row);
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        let top: Vec<Value> = order[..a.top.min(row.len())]
            .iter()
            .map(|&t| json!({"id": t, "logit": row[t], "logprob": lp[t]}))
            .collect();
        // The AR reading: logits at i predict token i+1.
        let next = ids
            .get(Shift::Next.target_of(i))
            .map(|&n| (n, lp[n as usize]));
        if let Some((_, p)) = next {
            log_likelihood += p as f64;
        }
        positions.push(json!({
            "position": i,
            "id": ids[i],
            "token": tokenizer.as_ref().and_then(|t| t.id_to_token(ids[i])),
            "logsumexp": row[order[0]] - lp[order[0]],
            "top": top,
            "next_id": next.map(|n| n.0),
            "next_logprob": next.map(|n| n.1),
        }));
    }
    let n_scored = l - 1;
    let out = json!({
        "model": a.model,
        "attention": attention_name,
        "seed": seed,
        "ids": ids,
        "positions": positions,
        "ar_log_likelihood": log_likelihood,
        "ar_tokens_scored": n_scored,
        "ar_nll_per_token": if n_scored > 0 { Some(-log_likelihood / n_scored as f64) } else { None },
        "logits": if full { Some(rows) } else { None },
    });
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("attention {attention_name}, {l} positions");
        for p in out["positions"].as_array().into_iter().flatten() {
            println!(
                "{:>5} {:>7} {:<16} top1 {:>7} next_logprob {}",
                p["position"],
                p["id"],
                p["token"].as_str().unwrap_or(""),
                p["top"][0]["id"],
                p["next_logprob"]
            );
        }
        println!("AR log-likelihood {log_likelihood:.4} over {n_scored} tokens");
    }
    Ok(())
}
