//! The `dlm` binary: parse, dispatch, print the error chain once (settings named as flags).
//! Exit codes: 0 success, 1 error (bad input, unreadable files, failed checks), 2 usage error
//! (from clap).

use clap::Parser;

// mimalloc keeps freed memory for reuse; glibc's malloc unmapped every large tensor on free, and
// faulted fresh zeroed pages in for the next (and shot down TLBs on the other core).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's runtime option setter (part of the linked library's API).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc.h: milliseconds before freed memory goes back to the OS.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

fn main() {
    // candle runs its elementwise ops on a thread pool of its own, beside rayon's, which runs the
    // GEMMs and dlm's fused kernels: two pools on the same cores hand work back and forth and
    // spin while waiting (14 % of a sampling step in perf). The ops left to candle on the CPU are
    // small, so its pool gets no extra threads unless the user asks for them. Set before any
    // thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // mimalloc returns freed memory to the OS 10 ms after the free. A sampling or training step
    // frees and re-allocates the same buffers every few hundred milliseconds, so each step paid
    // about a thousand page faults, zeroing huge pages (`perf stat`: ~1000 faults per SmolLM2
    // step; none with a longer delay). Ten seconds keeps steady loops fault-free and still
    // gives an idle server's memory back.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain setter of mimalloc, whose options may change at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
    let cli = dlm::cli::Cli::parse();
    if let Err(e) = dlm::cli::run(cli) {
        eprintln!("error: {}", dlm::cli::describe_error(&e));
        std::process::exit(1);
    }
}
