//! `dlm generate MODEL_DIR [--prompt TEXT] --length N --steps T`: diffusion sampling
//! (Algorithm 2, reference-semantics §2), prefix-conditioned or unconditional; the work is in
//! `cli::sampling`. `--ar`: autoregressive decoding with a KV cache, the baseline that every DLM
//! is compared with; its tokens stream to stdout as they are chosen.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

use super::args::{
    builtin_model, is_gguf_file, load_model_for_inference, load_tokenizer, RuntimeArgs,
};

use super::sampling::{parse_ids, read_jsonl, ChoiceArgs, DiffusionArgs, Request};
use crate::data::chat::{ChatMessage, ChatTemplate};
use crate::data::tokenizer::Tokenizer;
use crate::rng::Rng;
use crate::sample::autoregressive::{generate, ArOptions};
use crate::sample::filter::TokenChoice;
use crate::sample::request::render;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// HF-layout model directory (default: the built-in dlm-shakespeare-12m).
    #[arg(default_value_os_t = builtin_model())]
    pub model: PathBuf,
    /// Causal, left-to-right decoding with a KV cache (the AR baseline).
    #[arg(long)]
    pub ar: bool,
    /// The prompt; without one (and without --prompt-ids) diffusion generation is unconditional.
    #[arg(long)]
    pub prompt: Option<String>,
    /// The prompt as raw comma-separated token ids (no BOS is added).
    #[arg(long, conflicts_with = "prompt")]
    pub prompt_ids: Option<String>,
    /// Wrap the prompt in the model's chat template (its Jinja, as the tokenizer ships it).
    #[arg(long)]
    pub chat: bool,
    /// With --ar: the most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Diffusion: generated positions after the prompt (the canvas length is fixed) [default: a
    /// JSONL request's own `length`, else the model's generation_config.json, else 64].
    #[arg(long)]
    pub length: Option<usize>,
    #[command(flatten)]
    pub choice: ChoiceArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The prompt wrapped as one user turn in the model's chat template.
fn chat_prompt(model_dir: &Path, user: &str) -> anyhow::Result<String> {
    let turn = ChatMessage {
        role: "user".into(),
        content: user.into(),
    };
    let rendered = ChatTemplate::load(model_dir).and_then(|t| t.render(&[turn]));
    rendered.context("--chat")
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    if !a.ar {
        return run_diffusion(a);
    }
    let m = load_model_for_inference(&a.model, &a.runtime)?;
    // Token ids in and out need no tokenizer (a text prompt does: `load_tokenizer` says so).
    let tokenizer = match is_gguf_file(&a.model) || a.model.join("tokenizer.json").exists() {
        true => Some(load_tokenizer(&a.model)?),
        false => None,
    };
    let prompts = ar_prompts(&a, tokenizer.as_ref())?;
    let device = a.runtime.device.open()?;
    let opts = ArOptions {
        max_new_tokens: a.max_new_tokens,
        choice: TokenChoice::from_flags(
            a.choice.temperature.unwrap_or(0.0),
            a.choice.top_k,
            a.choice.top_p,
        ),
        stop_ids: m.config.eos_token_id.into_iter().collect(),
    };
    let mut rng = Rng::seed(a.choice.seed);
    let start = Instant::now();
    let (mut prompt_tokens, mut new_tokens) = (0, 0);
    for (index, ids) in prompts.iter().enumerate() {
        let mut shown = String::new();
        let mut all = Vec::new();
        let out = generate(m.model.as_ref(), ids, &opts, &mut rng, &device, |t| {
            // The stop token itself is not shown.
            if opts.stop_ids.contains(&t) {
                return;
            }
            all.push(t);
            if a.diffusion.json {
                return;
            }
            // Decode the whole continuation each time so multi-byte characters print whole.
            let text = render(tokenizer.as_ref(), &all);
            if text.len() > shown.len() && text.starts_with(&shown) && !text.ends_with('\u{FFFD}') {
                print!("{}", &text[shown.len()..]);
                let _ = std::io::stdout().flush();
                shown = text;
            }
        })?;
        match a.diffusion.json {
            true => {
                let text = render(tokenizer.as_ref(), &all);
                println!(
                    "{}",
                    serde_json::json!({"index": index, "ids": all, "text": text})
                );
            }
            false => println!(),
        }
        prompt_tokens += ids.len();
        new_tokens += out.len();
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{prompt_tokens} prompt tokens, {new_tokens} new tokens in {secs:.2} s ({:.1} tokens/s)",
        new_tokens as f64 / secs
    );
    Ok(())
}

/// `--ar`'s prompts as ids: `--prompt` (through the chat template with `--chat`) or
/// `--prompt-ids`, else each `--input` line's `prompt` or `prompt_ids` (nothing else: an AR model
/// continues a prompt, it fills no suffix).
fn ar_prompts(a: &GenerateArgs, tokenizer: Option<&Tokenizer>) -> anyhow::Result<Vec<Vec<u32>>> {
    let one = |prompt: Option<&String>, ids: Option<Vec<u32>>| -> anyhow::Result<Vec<u32>> {
        match (prompt, ids) {
            (_, Some(ids)) => Ok(ids),
            (Some(p), None) => {
                let Some(tokenizer) = tokenizer else {
                    bail!(
                        "{} has no tokenizer.json; pass token ids instead of text (--prompt-ids, \
                         or prompt_ids in --input)",
                        a.model.display()
                    );
                };
                match a.chat {
                    true => Ok(tokenizer.encode(&chat_prompt(&a.model, p)?)?),
                    false => Ok(tokenizer.encode(p)?),
                }
            }
            (None, None) => bail!("--ar needs --prompt, --prompt-ids or --input"),
        }
    };
    let Some(path) = &a.diffusion.input else {
        let ids = a.prompt_ids.as_deref().map(parse_ids).transpose()?;
        return Ok(vec![one(a.prompt.as_ref(), ids)?]);
    };
    if a.prompt.is_some() || a.prompt_ids.is_some() {
        bail!("--input replaces --prompt/--prompt-ids; give one or the other");
    }
    read_jsonl(path)?
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let line = format!("{} line {}", path.display(), i + 1);
            if r.prefix.is_some() || r.suffix.is_some() || r.suffix_ids.is_some() {
                bail!("{line}: --ar continues a prompt; it takes no prefix or suffix");
            }
            if r.template.is_some() || r.length.is_some() {
                bail!(
                    "{line}: --ar takes prompt or prompt_ids (a template or length is for \
                     diffusion; --max-new-tokens sets how many tokens)"
                );
            }
            one(r.prompt.as_ref(), r.prompt_ids)
        })
        .collect()
}

/// Diffusion generation: one request from the flags, or one per `--input` line.
fn run_diffusion(a: GenerateArgs) -> anyhow::Result<()> {
    let requests = match &a.diffusion.input {
        Some(path) => {
            if a.prompt.is_some() || a.prompt_ids.is_some() {
                bail!("--input replaces --prompt/--prompt-ids; give one or the other");
            }
            read_jsonl(path)?
        }
        None => {
            let prompt = match (&a.prompt, a.chat) {
                (Some(p), true) => Some(chat_prompt(&a.model, p)?),
                (None, true) => bail!("--chat needs --prompt"),
                (p, false) => p.clone(),
            };
            vec![Request {
                prompt,
                prompt_ids: a.prompt_ids.as_deref().map(parse_ids).transpose()?,
                ..Default::default()
            }]
        }
    };
    super::sampling::run(
        &a.model,
        &a.runtime,
        &a.diffusion,
        &a.choice,
        requests,
        a.length,
        true,
    )
}
