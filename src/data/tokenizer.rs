//! A thin wrapper over the `tokenizers` crate. It fixes the conventions dlm relies on everywhere:
//! `encode` never adds BOS/EOS (the diffusion canvas decides what goes where), special tokens in
//! the text are matched whole, and `decode` rejects ids outside the vocabulary instead of
//! silently skipping them. Three constructors cover the sources dlm meets: an HF
//! `tokenizer.json`, the original GPT-2 `encoder.json` + `vocab.bpe`, and the BPE parts embedded
//! in a GGUF file.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};

/// How text is split before byte-level BPE: the schemes of the tokenizers dlm rebuilds from
/// parts (GGUF's `tokenizer.ggml.pre` names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's regex.
    Gpt2,
    /// Every digit its own piece, then GPT-2's regex (SmolLM2's `smollm`).
    SmolLm,
    /// Qwen2's regex (Qwen2/2.5, and so Dream): NFC first, contractions case-insensitive, one
    /// digit per piece, newlines apart from other spaces.
    Qwen2,
    /// LLaMA-3's (GGUF `llama-bpe`): Qwen2's regex with digits in runs of up to three, and no
    /// normalizer.
    Llama3,
}

/// transformers' `PRETOKENIZE_REGEX` of `Qwen2Tokenizer`.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex of LLaMA-3's tokenizer.json (cl100k's; transformers' `TikTokenConverter`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A split on `regex` that keeps every match as its own piece, then byte-level without GPT-2's
/// regex: how Qwen2's and LLaMA-3's tokenizer.json pre-tokenize.
fn split_then_bytes(regex: &str, name: &str) -> Result<Sequence> {
    let split = Split::new(
        SplitPattern::Regex(regex.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| Error::Tokenizer(format!("the {name} split regex: {e}")))?;
    Ok(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]))
}

/// Text <-> token ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// Wraps a tokenizer built with the `tokenizers` API directly (e.g. a freshly trained one).
impl From<tokenizers::Tokenizer> for Tokenizer {
    fn from(inner: tokenizers::Tokenizer) -> Self {
        Self { inner }
    }
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json`; one that does not parse is reported as malformed.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let inner = text
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::Tokenizer(format!("{} is malformed: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// A model directory's `tokenizer.json` (or the tokenizer a `.gguf` model file embeds), or
    /// None when it has none (the model then takes token ids); a malformed one is an error.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        if dir.is_file()
            && dir
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return super::gguf_tokenizer::import_gguf_tokenizer(dir).map(Some);
        }
        let path = dir.join("tokenizer.json");
        match path.exists() {
            true => Self::from_file(&path).map(Some),
            false => Ok(None),
        }
    }

    /// Builds GPT-2's byte-level BPE from the original OpenAI files (`encoder.json` is HF's
    /// `vocab.json`, `vocab.bpe` is HF's `merges.txt`). `<|endoftext|>` becomes a special token.
    pub fn from_gpt2_files(encoder_json: &Path, vocab_bpe: &Path) -> Result<Self> {
        let enc_err = |msg: String| Error::Tokenizer(format!("{}: {msg}", encoder_json.display()));
        let text = std::fs::read_to_string(encoder_json).map_err(|e| Error::io(encoder_json, e))?;
        let map: HashMap<String, u32> = serde_json::from_str(&text)
            .map_err(|e| enc_err(format!("not a token->id map: {e}")))?;
        // from_bpe_parts wants tokens indexed by id, so the ids must be exactly 0..n.
        let mut tokens = vec![None; map.len()];
        for (tok, id) in map {
            match tokens.get_mut(id as usize) {
                Some(slot @ None) => *slot = Some(tok),
                Some(Some(_)) => return Err(enc_err(format!("id {id} is used twice"))),
                None => return Err(enc_err(format!("id {id} is not below the token count"))),
            }
        }
        // No holes are possible: n distinct ids all below n.
        let tokens: Vec<String> = tokens.into_iter().flatten().collect();

        let merges_text =
            std::fs::read_to_string(vocab_bpe).map_err(|e| Error::io(vocab_bpe, e))?;
        // The first line is a "#version: 0.2" header, not a merge.
        let merges: Vec<String> = merges_text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(str::to_owned)
            .collect();

        let eot = "<|endoftext|>";
        let eot_id = tokens
            .iter()
            .position(|t| t == eot)
            .ok_or_else(|| enc_err(format!("{eot} is missing")))?;
        let special = [(eot_id as u32, eot.to_owned())];
        Self::from_bpe_parts(&tokens, &merges, &special, PreTokenizer::Gpt2).map_err(|e| {
            Error::Tokenizer(format!(
                "{} + {}: {e}",
                encoder_json.display(),
                vocab_bpe.display()
            ))
        })
    }

    /// Builds a GPT-2 style byte-level BPE: `tokens[i]` has id `i`, each merge is `"left right"`
    /// in rank order, `special` lists tokens (already in `tokens`) that are matched whole, and
    /// `pre` says how text is split before BPE.
    pub fn from_bpe_parts(
        tokens: &[String],
        merges: &[String],
        special: &[(u32, String)],
        pre: PreTokenizer,
    ) -> Result<Self> {
        let mut vocab = Vocab::default();
        for (id, tok) in tokens.iter().enumerate() {
            // A duplicate would leave an id with no token and make decode lossy; refuse it.
            if let Some(prev) = vocab.insert(tok.clone(), id as u32) {
                return Err(Error::Tokenizer(format!(
                    "token {tok:?} appears twice in the vocabulary (ids {prev} and {id})"
                )));
            }
        }
        let merges = merges
            .iter()
            .enumerate()
            .map(|(rank, m)| match m.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                    Ok((a.to_owned(), b.to_owned()))
                }
                _ => Err(Error::Tokenizer(format!(
                    "merge {rank} ({m:?}) is not \"left right\""
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::Tokenizer(format!("building BPE: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        // No prefix space; trim_offsets only affects offsets, never ids.
        let byte_level = ByteLevel::new(false, false, true);
        match pre {
            PreTokenizer::Gpt2 => {
                inner.with_pre_tokenizer(Some(byte_level));
            }
            PreTokenizer::SmolLm => {
                inner.with_pre_tokenizer(Some(Sequence::new(vec![
                    PreTokenizerWrapper::Digits(Digits::new(true)),
                    PreTokenizerWrapper::ByteLevel(byte_level),
                ])));
            }
            PreTokenizer::Qwen2 => {
                // transformers' Qwen2Tokenizer: NFC, then its split (one digit per piece).
                inner
                    .with_normalizer(Some(NFC))
                    .map_err(|e| Error::Tokenizer(format!("the NFC normalizer: {e}")))?;
                inner.with_pre_tokenizer(Some(split_then_bytes(QWEN2_SPLIT, "qwen2")?));
            }
            PreTokenizer::Llama3 => {
                inner.with_pre_tokenizer(Some(split_then_bytes(LLAMA3_SPLIT, "llama-bpe")?));
            }
        }
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.with_post_processor(Some(ByteLevelProcessor::new(false, false, true)));

        let added: Vec<AddedToken> = special
            .iter()
            .map(|(id, tok)| {
                if tokens.get(*id as usize) != Some(tok) {
                    return Err(Error::Tokenizer(format!(
                        "special token {tok:?} should have id {id} but the vocabulary disagrees"
                    )));
                }
                Ok(AddedToken::from(tok.clone(), true))
            })
            .collect::<Result<_>>()?;
        // Tokens already in the BPE vocabulary keep their ids when added.
        inner
            .add_special_tokens(added)
            .map_err(|e| Error::Tokenizer(format!("adding special tokens: {e}")))?;
        Ok(Self { inner })
    }

    /// Writes `tokenizer.json`. A temporary file in the same directory is renamed over the
    /// target, so a crash never leaves a half-written tokenizer behind.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| Error::Tokenizer(format!("serialising for {}: {e}", path.display())))?;
        crate::atomic::write_atomic(path, json.as_bytes())
    }

    /// Token ids of `text`, with no BOS/EOS added; special tokens in the text are matched whole.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encoding: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let n = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary (size {n})"
            )));
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(format!("decoding: {e}")))
    }

    /// Number of ids, added tokens included: one more than the largest id.
    pub fn vocab_size(&self) -> usize {
        // Counting distinct strings (what `get_vocab_size(true)` does) would miss ids of tokens
        // that are both in the model and added; the largest id is what embeddings must cover.
        let model = self.inner.get_vocab_size(false);
        let added = self
            .inner
            .get_added_tokens_decoder()
            .keys()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        model.max(added)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Adds a special token (e.g. a new `[MASK]`) matched whole in text; returns its id, which
    /// is `vocab_size()` before the call unless the token already exists. Empty tokens are
    /// refused because `tokenizers` ignores them.
    pub fn add_special_token(&mut self, token: &str) -> Result<u32> {
        if token.is_empty() {
            return Err(Error::Input("cannot add an empty special token".into()));
        }
        self.inner
            .add_special_tokens([AddedToken::from(token.to_owned(), true)])
            .map_err(|e| Error::Tokenizer(format!("adding {token:?}: {e}")))?;
        self.token_to_id(token)
            .ok_or_else(|| Error::Tokenizer(format!("special token {token:?} was not added")))
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
