//! The request body: every field of OpenAI's completions and chat completions, dlm's infill and
//! dlm's own sampler fields, parsed once into `ApiRequest` with errors that name the field.

use serde::Deserialize;

use crate::data::chat::ChatMessage;
use crate::sample::dream::Alg;
use crate::sample::kv_reuse::CacheMode;
use crate::sample::llada::Remasking;
use crate::sample::request::SamplerName;
use crate::serve::error::ApiError;

/// A prompt: text or token ids, one or several (each becomes a choice).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, an array of strings, an array of token ids, or an array of those"
)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdsBatch(Vec<Vec<u32>>),
}

/// OpenAI's `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Every field any endpoint reads; each endpoint refuses the inputs that are not its own.
/// Unknown fields are ignored, as OpenAI clients send many.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiRequest {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    pub messages: Option<Vec<ChatMessage>>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub template: Option<String>,
    /// Infill: tokens between prefix and suffix.
    pub length: Option<usize>,
    /// Completions: generated positions (the canvas length is fixed; EOS ends the text early).
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub n: Option<usize>,
    pub stop: Option<Stop>,
    /// dlm: denoising steps (forwards); default one per generated token, at most the limit.
    pub steps: Option<usize>,
    pub sampler: Option<SamplerName>,
    pub threshold: Option<f32>,
    pub block_length: Option<usize>,
    /// dlm: the reference's full work (LM head on every row, all T forwards).
    #[serde(default)]
    pub exact: bool,
    /// dlm: reuse keys/values across a block's steps: "none", "prefix" or "dual" (approximate,
    /// as `--cache`).
    #[serde(default)]
    pub cache: CacheMode,
    /// dlm: the families' own sampler fields, each with its sampler (`FamilySettings`): llada's
    /// `remasking`, `cfg_scale`, `logits_eos_inf` and `confidence_eos_eot_inf`, dream's `alg`,
    /// `alg_temp` and `eps`.
    pub remasking: Option<Remasking>,
    pub cfg_scale: Option<f32>,
    pub logits_eos_inf: Option<bool>,
    pub confidence_eos_eot_inf: Option<bool>,
    pub alg: Option<Alg>,
    pub alg_temp: Option<f32>,
    pub eps: Option<f32>,
}

impl ApiRequest {
    /// The endpoint-specific fields, by name, and whether the body gives each; the order is
    /// the order in which a refused field is named.
    pub(super) fn inputs_given(&self) -> [(&'static str, bool); 7] {
        [
            ("prompt", self.prompt.is_some()),
            ("messages", self.messages.is_some()),
            ("template", self.template.is_some()),
            ("prefix", self.prefix.is_some()),
            ("suffix", self.suffix.is_some()),
            ("length", self.length.is_some()),
            ("max_tokens", self.max_tokens.is_some()),
        ]
    }
}

/// Parses a body: UTF-8 JSON of the right shape; errors name the field and what was wrong.
pub fn parse(body: &[u8]) -> Result<ApiRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::bad_request(format!(
            "the request body is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )));
    }
    // Serde would also read a struct from an array, by field order; only objects are requests.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let req: ApiRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the request body is not valid JSON: {inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("trailing data after the JSON object: {e}")))?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_fields_parse_by_name() {
        let r = parse(br#"{"prompt": "a", "sampler": "dream", "alg": "topk-margin", "eps": 0.01}"#)
            .unwrap();
        assert_eq!((r.alg, r.eps), (Some(Alg::TopkMargin), Some(0.01)));
        let r = parse(br#"{"prompt": "a", "remasking": "random", "cfg_scale": 1}"#).unwrap();
        assert_eq!(
            (r.remasking, r.cfg_scale),
            (Some(Remasking::Random), Some(1.0))
        );
        let e = parse(br#"{"prompt": "a", "alg": "best"}"#).unwrap_err();
        assert!(e.message.contains("`alg`"), "{}", e.message);
    }
}
