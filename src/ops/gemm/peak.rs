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
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if super::isa::features().has("avx512f") => {
            // SAFETY: AVX-512 F was just detected.
            unsafe { avx512(rounds) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 if super::isa::features().has("avx512_bf16") => {
            // SAFETY: AVX-512-BF16 was just detected.
            unsafe { avx512bf16(rounds) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::AmxBf16 if super::isa::features().has("amx_bf16") => {
            // SAFETY: AMX-BF16 was detected and permitted (isa.rs).
            unsafe { amx_bf16(rounds / 16) }
        }
        _ => generic(rounds),
    }
}

/// Twelve accumulators of sixteen lanes: 384 FLOPs a round.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512(rounds: usize) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(black_box(0.999_9));
    let b = _mm512_set1_ps(black_box(1e-4));
    let mut acc = [_mm512_set1_ps(black_box(1.0)); 12];
    for _ in 0..rounds {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    black_box(acc);
    (rounds * 12 * 16 * 2) as f64
}

/// Twelve accumulators of sixteen lanes, each VDPBF16PS two multiply-adds a lane: 768 FLOPs a
/// round.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512bf16(rounds: usize) -> f64 {
    use std::arch::x86_64::*;
    let one = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(black_box(0x3f80_3f80)));
    let mut acc = [_mm512_set1_ps(black_box(1.0)); 12];
    for _ in 0..rounds {
        for v in acc.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, one, one);
        }
    }
    black_box(acc);
    (rounds * 12 * 16 * 4) as f64
}

/// TDPBF16PS into four accumulator tiles from operand tiles loaded once: each instruction
/// 16 × 16 × 32 multiply-adds.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_bf16(rounds: usize) -> f64 {
    use std::arch::asm;
    let ones = [0x3f80u16; 16 * 32];
    crate::ops::packed_linear::amx::configure_tiles();
    asm!("tileloadd tmm4, [{0} + {1}*1]", in(reg) ones.as_ptr(), in(reg) 64usize, options(nostack, readonly));
    asm!("tileloadd tmm5, [{0} + {1}*1]", in(reg) ones.as_ptr(), in(reg) 64usize, options(nostack, readonly));
    asm!("tileloadd tmm6, [{0} + {1}*1]", in(reg) ones.as_ptr(), in(reg) 64usize, options(nostack, readonly));
    asm!("tileloadd tmm7, [{0} + {1}*1]", in(reg) ones.as_ptr(), in(reg) 64usize, options(nostack, readonly));
    for _ in 0..rounds {
        asm!(
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            options(nostack, nomem)
        );
    }
    asm!("tilerelease", options(nostack, nomem));
    (rounds * 4 * 16 * 16 * 32 * 2) as f64
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
