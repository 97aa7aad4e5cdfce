//! How much a DLM uses the text to the right of a masked token, the context an AR model never
//! sees and the reason a DLM should infill better. Two measurements on held-out data:
//!
//! 1. Masked-token cross-entropy at fixed masking rates t, with the model's own bidirectional
//!    attention and again with causal attention (every target then sees only its left). The
//!    difference is what the right context is worth to this model.
//! 2. On an infill set (`examples/make_infill_eval.rs`), the log-probability and argmax hit of each
//!    hole's first token given prefix + masked hole + suffix, and given the prefix + hole only.
//!
//! usage: cargo run --release --example right_context -- MODEL_DIR HELD_OUT_TEXT [INFILL.jsonl.gz]
//! (seeded; `docs/reproduction.md` quotes it for the built-in model's checkpoints.)

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, D};
use dlm::data::tokenizer::Tokenizer;
use dlm::diffusion::noise::mask_tokens;
use dlm::diffusion::shift::Shift;
use dlm::model::{load_dir, LanguageModel};
use dlm::ops::AttentionMask;
use dlm::rng::Rng;

const RATES: [f64; 4] = [0.02, 0.15, 0.5, 0.9];
const WINDOWS: usize = 16;
const INFILL_RECORDS: usize = 400;
/// Tokens skipped at the start of the text (a Gutenberg header, say).
const SKIP: usize = 2000;

/// Log-softmax rows [L, V] of one sequence under `attention`.
fn log_probs(
    model: &dyn LanguageModel,
    ids: &[u32],
    attention: &AttentionMask,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let x = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&x, attention)?.squeeze(0)?;
    Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, text, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: right_context MODEL_DIR HELD_OUT_TEXT [INFILL.jsonl.gz]");
    };
    let dir = Path::new(dir);
    let loaded = load_dir(dir, DType::F32, &Device::Cpu)?;
    let model = loaded.model.as_ref();
    let mask_id = loaded
        .config
        .mask_token_id
        .context("config.json has no mask_token_id")?;
    let shift = Shift::for_sampling(loaded.config.arch);
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let l = loaded.config.max_position_embeddings.min(256);
    let ids = tok.encode(&std::fs::read_to_string(text)?)?;
    anyhow::ensure!(
        ids.len() >= SKIP + WINDOWS * l,
        "{text}: fewer than {} tokens",
        SKIP + WINDOWS * l
    );

    println!(
        "{}: masked-token CE (nats) on {WINDOWS} windows of {l} tokens",
        dir.display()
    );
    let mut rng = Rng::seed(0);
    for t in RATES {
        let (mut ce, mut n) = ([0f64; 2], 0usize);
        for w in 0..WINDOWS {
            let x0 = &ids[SKIP + w * l..SKIP + (w + 1) * l];
            let draws: Vec<f32> = (0..l).map(|_| rng.uniform_f32()).collect();
            let noised = mask_tokens(x0, &draws, t as f32, &[], mask_id);
            let attentions = [AttentionMask::Bidirectional, AttentionMask::Causal];
            for (k, attention) in attentions.iter().enumerate() {
                let lp = log_probs(model, &noised.x_t, attention)?;
                for (row, target) in shift.targets(x0, |j| noised.masked[j]) {
                    ce[k] -= f64::from(lp[row][target as usize]);
                    n += usize::from(k == 0);
                }
            }
        }
        let n = n.max(1) as f64;
        println!(
            "  t {t:.2}: bidirectional {:.3}, causal {:.3}, right context worth {:.3} ({n} targets)",
            ce[0] / n,
            ce[1] / n,
            (ce[1] - ce[0]) / n
        );
    }

    let Some(infill) = rest.first() else {
        return Ok(());
    };
    let file = std::fs::File::open(infill).with_context(|| infill.clone())?;
    let lines = std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines();
    let (mut logp, mut hits, mut n) = ([0f64; 2], [0usize; 2], 0usize);
    for line in lines.take(INFILL_RECORDS) {
        let r: serde_json::Value = serde_json::from_str(&line?)?;
        let field = |k: &str| tok.encode(r[k].as_str().unwrap_or(""));
        let (prefix, hole, suffix) = (field("prefix")?, field("middle")?, field("suffix")?);
        let (Some(&gold), Some(row)) = (hole.first(), shift.row_for(prefix.len())) else {
            continue;
        };
        let mut canvas = prefix.clone();
        canvas.extend(std::iter::repeat_n(mask_id, hole.len()));
        let without = canvas.clone();
        canvas.extend(&suffix);
        for (k, ids) in [canvas, without].iter().enumerate() {
            let lp = &log_probs(model, ids, &AttentionMask::Bidirectional)?[row];
            let best = (0..lp.len())
                .max_by(|&a, &b| lp[a].total_cmp(&lp[b]))
                .unwrap_or(0);
            logp[k] += f64::from(lp[gold as usize]);
            hits[k] += usize::from(best == gold as usize);
        }
        n += 1;
    }
    let n = n.max(1);
    for (k, name) in ["with the suffix", "suffix withheld"].iter().enumerate() {
        println!(
            "{infill}, {name}: first hole token log-prob {:.3}, argmax hit {:.1}% ({n} holes)",
            logp[k] / n as f64,
            100.0 * hits[k] as f64 / n as f64
        );
    }
    Ok(())
}
