//! Text in, token ids out. Knows nothing of models; of GGUF files it reads only the metadata
//! (`model::gguf`) that an embedded tokenizer is rebuilt from.
//!
//! `corpus` streams documents from files; `packing` (§1.6) and `sft` (§1.7) turn them into
//! fixed-length examples; `loader` batches those with a resumable, deterministic cursor;
//! `tokenizer_train` trains a byte-level BPE from a corpus, `gguf_tokenizer` rebuilds the one a
//! GGUF file embeds; `chat` renders conversations with a model's chat template.

pub mod chat;
pub mod corpus;
mod corpus_formats;
#[cfg(feature = "parquet")]
mod corpus_parquet;
pub mod gguf_tokenizer;
pub mod loader;
pub mod packing;
pub mod sft;
pub mod tokenizer;
pub mod tokenizer_train;
