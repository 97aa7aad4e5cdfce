//! TEMPORARY placeholder for the GGUF importer (API only).
use std::path::Path;

use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};

pub struct GgufLlamaParams {
    pub n_layer: usize,
    pub hidden: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub context_length: usize,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub tied: bool,
    pub name: Option<String>,
}
pub struct GgufImport {
    pub params: GgufLlamaParams,
    pub tensors: Vec<(String, candle_core::Tensor)>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
}
pub fn import_llama_gguf(path: &Path) -> Result<GgufImport> {
    Err(Error::gguf(path, "not yet"))
}
