//! The `dlm` binary: parse, dispatch, print the error chain once. Exit codes: 0 success,
//! 1 error (bad input, unreadable files, failed checks), 2 usage error (from clap).

use clap::Parser;

fn main() {
    let cli = dlm::cli::Cli::parse();
    if let Err(e) = dlm::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
