//! The byte-level BPE tokenizer a GGUF file embeds (`tokenizer.ggml.*` metadata), rebuilt from
//! the metadata `model::gguf` reads. Only the schemes implemented here are accepted: another
//! would silently produce different ids.

use std::path::Path;

use super::tokenizer::{PreTokenizer, Tokenizer};
use crate::error::Result;
use crate::model::gguf::{GgufFile, GgufValue};

/// The tokenizer embedded in `f` (cheap: no tensor is read). Any architecture is accepted.
pub fn gguf_tokenizer(f: &GgufFile) -> Result<Tokenizer> {
    let model = f.required_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(f.err(format!(
            "tokenizer model {model:?} is not supported (only \"gpt2\" byte-level BPE)"
        )));
    }
    // The pre-tokenizer decides how text is split before BPE.
    let pre = match f.get("tokenizer.ggml.pre").map(|v| v.as_str()) {
        None | Some(Some("default" | "gpt2")) => PreTokenizer::Gpt2,
        Some(Some("smollm")) => PreTokenizer::SmolLm,
        Some(Some("qwen2")) => PreTokenizer::Qwen2,
        Some(Some("llama-bpe")) => PreTokenizer::Llama3,
        Some(other) => {
            let known = "gpt2, smollm, qwen2, llama-bpe";
            return Err(f.err(format!(
                "tokenizer pre-tokenizer {other:?} is not supported ({known})"
            )));
        }
    };
    let tokens = f.strings("tokenizer.ggml.tokens")?;
    let merges = f.strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(GgufValue::as_i64).collect::<Option<Vec<_>>>())
            .filter(|t| t.len() == tokens.len())
            .ok_or_else(|| f.err("tokenizer.ggml.token_type is not one integer per token"))?,
    };
    // Type 3 = CONTROL: special tokens matched whole (<|im_start|> and friends).
    let special: Vec<(u32, String)> = types
        .iter()
        .zip(&tokens)
        .enumerate()
        .filter(|(_, (&t, _))| t == 3)
        .map(|(i, (_, s))| (i as u32, s.clone()))
        .collect();
    Tokenizer::from_bpe_parts(&tokens, &merges, &special, pre)
        .map_err(|e| f.err(format!("embedded tokenizer: {e}")))
}

/// The tokenizer embedded in the GGUF file at `path`.
pub fn import_gguf_tokenizer(path: &Path) -> Result<Tokenizer> {
    gguf_tokenizer(&GgufFile::open(path)?)
}
