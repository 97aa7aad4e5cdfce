//! `dlm pretrain`: training from random initialisation with the AR or the diffusion objective,
//! so that adaptation can be compared with a DLM trained from scratch.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use super::adapt::{eos_id, packed_sources, NEW_MASK_TOKEN};
use super::train::{resume, start, TrainArgs};
use crate::data::corpus::CorpusOptions;
use crate::data::tokenizer::Tokenizer;
use crate::model::ModelConfig;
use crate::rng::Rng;
use crate::train::init::init_weights;
use crate::train::objective::Objective;
use crate::train::trainer::RunConfig;

#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// gpt2 or llama.
    #[arg(long, default_value = "gpt2")]
    pub arch: String,
    /// A size (tiny, mini, small) or an HF config.json (its vocab_size is replaced).
    #[arg(long, default_value = "mini")]
    pub config: String,
    /// tokenizer.json to train with.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// ar (next-token, causal) or diffusion (Algorithm 1).
    #[arg(long, default_value = "ar")]
    pub objective: String,
    /// Diffusion without the shift.
    #[arg(long)]
    pub no_shift: bool,
    /// Diffusion annealing steps (0: bidirectional from the start).
    #[arg(long, default_value_t = 0)]
    pub anneal_steps: u64,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// (layers, width, heads) of the named sizes; `small` is GPT-2 small.
fn size(name: &str) -> Option<(usize, usize, usize)> {
    match name {
        "tiny" => Some((2, 64, 4)),
        "mini" => Some((6, 384, 6)),
        "small" => Some((12, 768, 12)),
        _ => None,
    }
}

fn hf_config(
    arch: &str,
    spec: &str,
    vocab: usize,
    context: usize,
    eos: Option<u32>,
) -> anyhow::Result<serde_json::Value> {
    if let Some((layers, d, heads)) = size(spec) {
        return Ok(match arch {
            "gpt2" => json!({
                "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab,
                "n_positions": context, "n_embd": d, "n_layer": layers, "n_head": heads,
                "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": true,
                "bos_token_id": eos, "eos_token_id": eos,
            }),
            "llama" => json!({
                "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
                "hidden_size": d, "intermediate_size": d * 8 / 3 / 64 * 64 + 64, "num_hidden_layers": layers,
                "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": context,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": true,
                "bos_token_id": eos, "eos_token_id": eos,
            }),
            other => bail!("unknown --arch `{other}` (gpt2 or llama)"),
        });
    }
    let text = std::fs::read_to_string(spec).with_context(|| {
        format!(
            "--config `{spec}` is neither a size (tiny, mini, small) nor a readable config.json"
        )
    })?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{spec}: not valid JSON"))?;
    value["vocab_size"] = vocab.into();
    Ok(value)
}

pub fn run(a: PretrainArgs) -> anyhow::Result<()> {
    let t = &a.train;
    let sources = |run: &RunConfig, config: &ModelConfig, tok: &Tokenizer| {
        let options = t.corpus_options(CorpusOptions::default());
        packed_sources(run, tok, eos_id(config, tok)?, options, t.val_fraction)
    };
    if let Some(run_dir) = &t.resume {
        return resume(t, run_dir, sources);
    }
    let out = t.out.as_ref().context("pass --out RUN_DIR")?;
    let tok_path = a
        .tokenizer
        .as_ref()
        .context("pass --tokenizer tokenizer.json (train one with `dlm tokenizer train`)")?;
    if t.data.is_empty() {
        bail!("pass --data PATH...");
    }
    let mut tokenizer = Tokenizer::from_file(tok_path)?;
    let eos = tokenizer.token_to_id("<|endoftext|>");
    let objective = match a.objective.as_str() {
        "ar" => Objective::Ar,
        "diffusion" => {
            let mask_id = match tokenizer.token_to_id(NEW_MASK_TOKEN) {
                Some(id) => id,
                None => tokenizer.add_special_token(NEW_MASK_TOKEN)?,
            };
            Objective::Diffusion {
                mask_id,
                shift: !a.no_shift,
                anneal_steps: a.anneal_steps,
            }
        }
        other => bail!("unknown --objective `{other}` (ar or diffusion)"),
    };
    let context = t.seq_len.max(if a.arch == "gpt2" { 1024 } else { 2048 });
    let value = hf_config(&a.arch, &a.config, tokenizer.vocab_size(), context, eos)?;
    let mut config = ModelConfig::from_json(value, std::path::Path::new(&a.config))?;
    if let Objective::Diffusion { mask_id, .. } = objective {
        config.mask_token_id = Some(mask_id);
    }
    let weights = init_weights(&config, &mut Rng::seed(t.seed))?;
    let run = t.run_config("pretrain", objective, None)?;
    start(t, &run, out, config, weights, &tokenizer, None, sources)
}
