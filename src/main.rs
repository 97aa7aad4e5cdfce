//! The `dlm` binary: parse, dispatch, print the error chain once. Exit codes: 0 success,
//! 1 error (bad input, unreadable files, failed checks), 2 usage error (from clap).

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // candle runs its elementwise ops on a thread pool of its own, beside rayon's, which runs the
    // GEMMs and dlm's fused kernels: two pools on the same cores hand work back and forth and
    // spin while waiting (14 % of a sampling step in perf). The ops left to candle on the CPU are
    // small, so its pool gets no extra threads unless the user asks for them. Set before any
    // thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = dlm::cli::Cli::parse();
    if let Err(e) = dlm::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
