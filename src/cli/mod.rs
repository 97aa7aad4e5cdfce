//! The command line: one file per subcommand, shared option groups in `args`.

mod args;
mod bench;
mod bench_sample;
mod convert;
mod diffusion;
mod generate;
mod infill;
mod info;
mod score;

use clap::{Parser, Subcommand};

pub use args::{load_model, load_tokenizer, parse_device, parse_dtype};

#[derive(Debug, Parser)]
#[command(
    name = "dlm",
    version,
    about = "Diffusion language models adapted from autoregressive ones"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import a GGUF (llama architecture) into an HF-layout model directory.
    Convert(convert::ConvertArgs),
    /// Describe a model directory.
    Info(info::InfoArgs),
    /// Generate text by diffusion sampling (`--ar`: causal decoding with a KV cache, the AR baseline).
    Generate(generate::GenerateArgs),
    /// Fill masked spans between given text (prefix/suffix or a `<|mask:N|>` template).
    Infill(infill::InfillArgs),
    /// Per-position logits and the shifted log-likelihood of a text under a chosen attention.
    Score(score::ScoreArgs),
    /// Benchmarks that print a ratio against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Convert(a) => convert::run(a),
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Infill(a) => infill::run(a),
        Command::Score(a) => score::run(a),
        Command::Bench(c) => bench::run(c),
    }
}
