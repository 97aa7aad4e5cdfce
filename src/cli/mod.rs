//! The command line: one file per subcommand, shared option groups in `args`.

mod adapt;
mod args;
mod bench;
mod bench_gemm;
mod bench_sample;
mod bench_serve;
mod convert;
mod error_text;
mod eval;
mod generate;
mod infill;
mod info;
mod info_system;
mod named;
mod plot;
mod pretrain;
mod quantize;
mod sampling;
mod score;
mod score_loss;
mod serve;
mod sft;
mod tokenizer;
mod train;

use clap::{Parser, Subcommand};

use crate::dist;

pub use args::{load_model, load_tokenizer};
pub use error_text::describe_error;

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
    /// Keep a model directory's matrices as q8_0/q4_0/q4_1 blocks, for CPU inference.
    Quantize(quantize::QuantizeArgs),
    /// Adapt an AR model into a diffusion LM (Algorithm 1).
    Adapt(adapt::AdaptArgs),
    /// Train from random initialisation (AR or diffusion objective).
    Pretrain(pretrain::PretrainArgs),
    /// Supervised fine-tuning of a diffusion LM on prompt/response pairs.
    Sft(sft::SftArgs),
    /// Draw a run's loss curve as PNG.
    Plot(plot::PlotArgs),
    /// Describe a model directory.
    Info(info::InfoArgs),
    /// Generate text by diffusion sampling (`--ar`: causal decoding with a KV cache, the AR baseline).
    Generate(generate::GenerateArgs),
    /// Fill masked spans between given text (prefix/suffix or a `<|mask:N|>` template).
    Infill(infill::InfillArgs),
    /// Per-position logits and the shifted log-likelihood of a text under a chosen attention.
    Score(score::ScoreArgs),
    /// Serve the model over HTTP (OpenAI-shaped API, SSE step stream, web playground at /).
    Serve(serve::ServeArgs),
    /// The paper's benchmarks on a DLM (diffusion scoring and sampling) or, with --ar, an AR model.
    Eval(eval::EvalArgs),
    /// Benchmarks that print a ratio against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Tokenizer tools (`train`: byte-level BPE from a corpus).
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
}

impl Command {
    /// The training options, for the commands that train.
    fn train_args(&self) -> Option<&train::TrainArgs> {
        match self {
            Command::Adapt(a) => Some(&a.train),
            Command::Pretrain(a) => Some(&a.train),
            Command::Sft(a) => Some(&a.train),
            _ => None,
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // `--world-size N` outside a launcher: this process only starts mpirun, which runs the ranks.
    let world = cli.command.train_args().and_then(|t| t.world_size);
    if let Some(n) = world.filter(|&n| n > 1 && dist::launcher_world_size().is_none()) {
        return Ok(dist::relaunch_under_mpirun(n)?);
    }
    match cli.command {
        Command::Convert(a) => convert::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Adapt(a) => adapt::run(a),
        Command::Pretrain(a) => pretrain::run(a),
        Command::Sft(a) => sft::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Infill(a) => infill::run(a),
        Command::Score(a) => score::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(c) => bench::run(c),
        Command::Tokenizer(c) => tokenizer::run(c),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_has_a_consistent_definition() {
        // clap checks a subcommand's arguments only when that subcommand runs; check them all.
        super::Cli::command().debug_assert();
    }
}
