//! Text in, token ids out. Knows nothing of models.

pub mod tokenizer;
