//! Each path's arithmetic peak, measured: a register-only multiply-add loop (no loads, no
//! stores, enough independent accumulators to hide the FMA latency), for `dlm bench gemm` to
//! state each kernel's GFLOP/s as a fraction of what the same core can do.

use std::hint::black_box;

use super::isa::Isa;

/// Runs `rounds` of `path`'s loop on this thread and returns the FLOPs done (a multiply-add
/// counts two). `path` must be runnable on this CPU.
pub fn fma_loop(path: Isa, rounds: usize) -> f64 {
    match path {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if std::is_x86_feature_detected!("fma") => {
            // SAFETY: FMA (and AVX) were just detected.
            unsafe { avx2(rounds) }
        }
        _ => generic(rounds),
    }
}

/// Twelve accumulators of eight lanes: 192 FLOPs a round.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(rounds: usize) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(black_box(0.999_9));
    let b = _mm256_set1_ps(black_box(1e-4));
    let mut acc = [_mm256_set1_ps(black_box(1.0)); 12];
    for _ in 0..rounds {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    black_box(acc);
    (rounds * 12 * 8 * 2) as f64
}

/// The portable loop: sixteen accumulators of four lanes, multiply then add (what the baseline
/// target compiles plain Rust to): 128 FLOPs a round.
fn generic(rounds: usize) -> f64 {
    let (a, b) = (black_box(0.999_9f32), black_box(1e-4f32));
    let mut acc = [[black_box(1.0f32); 4]; 16];
    for _ in 0..rounds {
        for v in acc.iter_mut() {
            for x in v.iter_mut() {
                *x = *x * a + b;
            }
        }
    }
    black_box(acc);
    (rounds * 16 * 4 * 2) as f64
}
