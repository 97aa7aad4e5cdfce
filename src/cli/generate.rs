//! `dlm generate --ar MODEL_DIR --prompt TEXT`: autoregressive decoding with a KV cache, the
//! baseline that every DLM is compared with. Tokens stream to stdout as they are chosen.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use clap::Args;

use super::args::{load_model, load_tokenizer, RuntimeArgs};
use crate::rng::Rng;
use crate::sample::autoregressive::{generate, ArOptions};
use crate::sample::filter::TokenChoice;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// HF-layout model directory.
    pub model: PathBuf,
    /// Causal, left-to-right decoding with a KV cache (the AR baseline).
    #[arg(long)]
    pub ar: bool,
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template (ChatML templates).
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus filtering threshold.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The ChatML rendering of one user turn, with the template's default system message if it has
/// one. dlm does not run Jinja; templates that are not ChatML are refused by name.
fn chat_prompt(model_dir: &Path, user: &str) -> anyhow::Result<String> {
    let path = model_dir.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let Some(template) = config.get("chat_template").and_then(|t| t.as_str()) else {
        bail!("{} has no chat_template; drop --chat", path.display());
    };
    if !template.contains("<|im_start|>") {
        bail!(
            "{}: only ChatML chat templates are supported",
            path.display()
        );
    }
    // The default system message sits in a string literal, after a newline that the template
    // may hold literally or as an escape.
    let system = ["<|im_start|>system\n", "<|im_start|>system\\n"]
        .iter()
        .find_map(|marker| {
            let start = template.find(marker)? + marker.len();
            let rest = &template[start..];
            rest.find("<|im_end|>").map(|end| rest[..end].to_string())
        });
    let mut out = String::new();
    if let Some(system) = system {
        out += &format!("<|im_start|>system\n{system}<|im_end|>\n");
    }
    out += &format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n");
    Ok(out)
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    if !a.ar {
        bail!("diffusion generation is not available yet; pass --ar for autoregressive decoding");
    }
    let m = load_model(&a.model, &a.runtime)?;
    let tokenizer = load_tokenizer(&a.model)?;
    let prompt = if a.chat {
        chat_prompt(&a.model, &a.prompt)?
    } else {
        a.prompt.clone()
    };
    let ids = tokenizer.encode(&prompt)?;
    let device = super::args::parse_device(&a.runtime.device)?;
    let opts = ArOptions {
        max_new_tokens: a.max_new_tokens,
        choice: TokenChoice::from_flags(a.temperature, a.top_k, a.top_p),
        stop_ids: m.config.eos_token_id.into_iter().collect(),
    };
    let mut rng = Rng::seed(a.seed);
    let start = Instant::now();
    let mut shown = String::new();
    let mut all = Vec::new();
    let out = generate(m.model.as_ref(), &ids, &opts, &mut rng, &device, |t| {
        // Decode the whole continuation each time so multi-byte characters print whole; the
        // stop token itself is not shown.
        if opts.stop_ids.contains(&t) {
            return;
        }
        all.push(t);
        if let Ok(text) = tokenizer.decode(&all) {
            if text.len() > shown.len() && text.starts_with(&shown) && !text.ends_with('\u{FFFD}') {
                print!("{}", &text[shown.len()..]);
                let _ = std::io::stdout().flush();
                shown = text;
            }
        }
    })?;
    println!();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} prompt tokens, {} new tokens in {:.2} s ({:.1} tokens/s)",
        ids.len(),
        out.len(),
        secs,
        out.len() as f64 / secs
    );
    Ok(())
}
