//! `dlm tokenizer train`: a byte-level BPE tokenizer from a corpus (see `data::corpus` for the
//! formats read and `data::tokenizer_train` for the conventions).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::data::corpus::{Corpus, CorpusOptions, Fields};
use crate::data::tokenizer_train::train_bpe;

#[derive(Debug, Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer and write tokenizer.json.
    Train(TrainArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Vocabulary size, special tokens and the 256 byte tokens included.
    #[arg(long)]
    pub vocab_size: usize,
    /// Corpus files or directories (.txt, .md, .json, .jsonl, .parquet; .gz / .zst).
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Output tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Special tokens, given the first ids in this order.
    #[arg(long = "special", default_values_t = ["<|endoftext|>".to_string()])]
    pub special: Vec<String>,
    /// JSON/Parquet field holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Plain-text files hold one document per non-blank line.
    #[arg(long)]
    pub line_docs: bool,
}

pub fn run(c: TokenizerCommand) -> anyhow::Result<()> {
    match c {
        TokenizerCommand::Train(a) => train(a),
    }
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    let options = CorpusOptions {
        fields: Fields::Text { key: a.text_field },
        line_docs: a.line_docs,
    };
    let corpus = Corpus::open(&a.data, options)?;
    let (tokenizer, stats) = train_bpe(&corpus, a.vocab_size, &a.special)?;
    tokenizer.save(&a.out)?;
    eprintln!(
        "trained a {}-token BPE on {} documents from {} files{}; wrote {}",
        tokenizer.vocab_size(),
        stats.documents,
        stats.files,
        match stats.skipped_non_utf8_lines {
            0 => String::new(),
            n => format!(" ({n} non-UTF-8 lines skipped)"),
        },
        a.out.display()
    );
    Ok(())
}
