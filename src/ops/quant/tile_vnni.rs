//! The AVX-512-VNNI product of a run of quantised weight rows with every int8 activation row:
//! one VPDPBUSD (64 u8 × i8 products summed in fours into sixteen i32) where AVX2 needs
//! `maddubs` + `madd` (and two `sign`s for signed weights). Tiles are up to 4 weight rows × 2
//! activation rows, accumulated in registers across the whole of k.
//!
//! - Byte blocks (Q8_0) go two a step (`pair_tile`): per weight row two loads cover the pair,
//!   one two-source byte permute gathers its 64 q and a word permute its two f16 scales, into
//!   the lanes where VPDPBUSD leaves each block's sums (an odd last block with the upper half
//!   zero). (The scales used to be read one by one into general registers, 16 at a time: a
//!   quarter of the kernel's instructions, but no measurable time beside the weights' stream.)
//! - 4-bit blocks (Q4_0, Q4_1) go four a step (`quad_tile`): one two-source VBMI byte permute
//!   puts the four blocks' 64 nibble bytes in one register, a mask and a shift split it into
//!   their elements 0..16 and 16..32, and two VPDPBUSD multiply them with x rearranged to match
//!   once per product (`QuadActs`); block k's sums land in lanes 4k..4k + 4, where a second
//!   permute of the same load puts its f16 scale (and Q4_1's min). About half the vector
//!   instructions of two blocks a step: the M = 1 product 1.5× faster for Q4_0, 2.5× for Q4_1
//!   (whose mins were read one by one), on one thread with the weights in L2.
//!
//! The kernel needs AVX-512-VBMI (Ice Lake, Sapphire Rapids and Zen 4 have it; Cascade Lake
//! takes AVX2). VPDPBUSD wants its first operand unsigned. Every weight is stored as
//! d·(u − bias) or d·u + min with u an unsigned byte: Q8_0 as its signed q with bias 128
//! (u = q ^ 0x80), Q4_0 as its nibble with bias 8, Q4_1 as its nibble plus the block's min. A
//! bias is taken off in integers: each block's sums start from −bias·Σx (Q8_0: one VPDPBUSD of
//! the bias bytes with x, shared by the tile's weight rows; Q4_0: `QuadActs::starts`), so
//! Σ(u − bias)·x is exact. Q4_1's min is the f32 term min·(d_x·Σq_x) per block, in the loop.
//! Q4_K keeps the per-row AVX2 path.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::blocks::{QuadActs, QuantActs, QuantType, ACT_BLOCK, QUAD};
use super::TileJob;

/// Whether `ty` has a tiled kernel here.
pub fn tiled(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1)
}

/// Whether this CPU runs the kernel (VBMI's byte permute unpacks the 4-bit blocks).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vbmi")
        && is_x86_feature_detected!("f16c")
}

/// Weight rows per tile (a multiple of it keeps every tile full).
pub const TILE_ROWS: usize = 4;

/// How many tiles ahead of the one being multiplied the kernel prefetches (whole weight tiles
/// of TILE_ROWS rows): decoding SmolLM2 in Q8_0 took 7.9 → 5.8 ms a token with 2 (1: 6.3-6.7,
/// 4: 6.0, 8: 5.8-6.2), Q4_0 4.4-4.9 → 4.1-4.5. The lines go to L2 (`_MM_HINT_T1`), not L1: a
/// T0 prefetch holds one of L1's few fill buffers until its line arrives from memory, which
/// capped the lines in flight when memory was slow (Q8_0 9.3-10.1 → 7.0-7.6 ms a token in the
/// same invocation, T2 the same as T1, distances 1-12 no better; Q4_0 within the noise).
const PREFETCH_TILES: usize = 2;

/// Blocks whose x scales are read together: one register of f32.
const GROUP: usize = 16;

/// out[i·ldo + j] = x row i · w row j for the `w.len() / row_bytes` weight rows `w` and every
/// row of `acts`.
///
/// # Safety
/// `available()`; `tiled(ty)`; `w` holds whole rows of `acts.cols` elements; `out` has room
/// for `acts.rows()` rows of `ldo` ≥ (weight rows) floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
pub unsafe fn product(ty: QuantType, w: &[u8], acts: &QuantActs, out: &mut [f32], ldo: usize) {
    let job = TileJob::new(ty, w, acts, out, ldo);
    match ty {
        QuantType::Q8_0 => all::<Q8_0>(&job),
        QuantType::Q4_0 => all::<Q4_0>(&job),
        _ => all::<Q4_1>(&job),
    }
}

/// Runs `$tile::<$f, W, X>($args)` for the tile's actual (rows, x rows), each at most (4, 2).
macro_rules! dispatch {
    ($tile:ident, $f:ty, $rows:expr, $xrows:expr, $($arg:expr),*) => {
        match ($rows, $xrows) {
            (4, 2) => $tile::<$f, 4, 2>($($arg),*),
            (4, _) => $tile::<$f, 4, 1>($($arg),*),
            (3, 2) => $tile::<$f, 3, 2>($($arg),*),
            (3, _) => $tile::<$f, 3, 1>($($arg),*),
            (2, 2) => $tile::<$f, 2, 2>($($arg),*),
            (2, _) => $tile::<$f, 2, 1>($($arg),*),
            (_, 2) => $tile::<$f, 1, 2>($($arg),*),
            _ => $tile::<$f, 1, 1>($($arg),*),
        }
    };
}

/// Every weight row against every x row, in tiles of at most 4 × 2.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
unsafe fn all<F: Format>(job: &TileJob) {
    let (nw, m) = (job.nw, job.m);
    let quads = F::NIBBLES.map(|_| job.acts.quads());
    for j0 in (0..nw).step_by(TILE_ROWS) {
        let rows = (nw - j0).min(TILE_ROWS);
        for i0 in (0..m).step_by(2) {
            let xrows = (m - i0).min(2);
            match quads {
                Some(q) => dispatch!(quad_tile, F, rows, xrows, job, q, j0, i0),
                None => dispatch!(pair_tile, F, rows, xrows, job, j0, i0),
            }
        }
    }
}

/// Weight rows j0..j0 + W of byte blocks (Q8_0) against x rows i0..i0 + X, accumulated in
/// registers over every pair of blocks, then written to out. Per weight row, from the 64 bytes
/// at the pair's start and the 64 four bytes on (which end where the pair does): one two-source
/// byte permute gathers the pair's 64 q, and a word permute of the first load puts the first
/// block's f16 scale in lanes 0..8 and the second's in 8..16, where VPDPBUSD leaves each block's
/// sums. x's scales are read 16 blocks at a time and permuted the same way per pair.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)] // r and i index both operands and the output
unsafe fn pair_tile<F: Format, const W: usize, const X: usize>(
    job: &TileJob,
    j0: usize,
    i0: usize,
) {
    let (nb, cols) = (job.nb, job.acts.cols);
    let mut acc = [[_mm512_setzero_ps(); X]; W];
    let w = job.w.add(j0 * job.rb);
    let xq = job.acts.qs.as_ptr().add(i0 * cols);
    let xd = job.acts.d.as_ptr().add(i0 * nb);
    let bias = _mm512_set1_epi8(F::BIAS as i8);
    // Opaque to the compiler, as in quad_tile (constant byte indices become slower permutes).
    let [bytes, scales] = std::hint::black_box(pair_indices::<F>());
    // Lanes 0..8 take the pair's first x scale, 8..16 its second.
    let halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    // The tile PREFETCH_TILES on is asked for a few lines per pair of blocks, spread over
    // this tile's pairs: the hardware prefetcher alone left the product latency-bound.
    let ahead = w.wrapping_add(PREFETCH_TILES * W * job.rb);
    let lines = (W * job.rb).div_ceil(64);
    let lines_per_pair = lines.div_ceil(nb.div_ceil(2));
    for g in (0..nb).step_by(GROUP) {
        let count = (nb - g).min(GROUP);
        let valid: __mmask16 = (1u32 << count).wrapping_sub(1) as u16;
        let dxs: [__m512; X] =
            std::array::from_fn(|i| _mm512_maskz_loadu_ps(valid, xd.add(i * nb + g)));
        for p in 0..count.div_ceil(2) {
            let b = g + 2 * p;
            for line in (b / 2 * lines_per_pair..).take(lines_per_pair) {
                if line < lines {
                    // A hint: never faults, even past the matrix.
                    _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line * 64) as *const i8);
                }
            }
            let both = b + 1 < nb;
            let mut u = [_mm512_setzero_si512(); W];
            let mut dw = [_mm512_setzero_ps(); W];
            for r in 0..W {
                let a = w.add(r * job.rb + b * F::BYTES);
                let (first, next) = match both {
                    true => (
                        _mm512_loadu_si512(a as _),
                        _mm512_loadu_si512(a.add(2 * F::BYTES - 64) as _),
                    ),
                    // A lone last block: its bytes alone, zeros (q and scale) after them.
                    false => (
                        _mm512_maskz_loadu_epi8((1u64 << F::BYTES) - 1, a as *const i8),
                        _mm512_setzero_si512(),
                    ),
                };
                u[r] = _mm512_xor_si512(_mm512_permutex2var_epi8(first, bytes, next), bias);
                let d = _mm512_castsi512_si256(_mm512_permutexvar_epi16(scales, first));
                dw[r] = _mm512_cvtph_ps(d);
            }
            let pick = _mm512_add_epi32(halves, _mm512_set1_epi32(2 * p as i32));
            for i in 0..X {
                let xp = xq.add(i * cols + b * ACT_BLOCK);
                let x = match both {
                    true => _mm512_loadu_si512(xp as _),
                    false => _mm512_zextsi256_si512(_mm256_loadu_si256(xp as _)),
                };
                // −bias·Σx in each group of four, where every weight row's sums start.
                let start = _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, x),
                );
                let dx = _mm512_permutexvar_ps(pick, dxs[i]);
                for r in 0..W {
                    let ints = _mm512_dpbusd_epi32(start, u[r], x);
                    let s = _mm512_mul_ps(dw[r], dx);
                    acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), s, acc[r][i]);
                }
            }
        }
    }
    write_tile::<W, X>(job, &acc, j0, i0);
}

/// Weight rows j0..j0 + W of 4-bit blocks (Q4_0, Q4_1) against x rows i0..i0 + X (`quads`:
/// the activations in quad order), four blocks a step. Per weight row, from the 64 bytes at the
/// four blocks' start (and the 64 ending at their end): one permute gathers their nibble bytes,
/// a mask and a shift split them into elements 0..16 and 16..32, two VPDPBUSD with x's
/// matching halves leave block k's integer sum in lanes 4k..4k + 4, and a second permute puts
/// block k's f16 scale in the same lanes (as Q4_1's min). Q4_0's bias enters as each block's
/// starting sum −8·Σx (`QuadActs::starts`), Q4_1's min as min·(d_x·Σx) (`QuadActs::sums`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)] // r and i index both operands and the output
unsafe fn quad_tile<F: Format, const W: usize, const X: usize>(
    job: &TileJob,
    quads: &QuadActs,
    j0: usize,
    i0: usize,
) {
    let nb = job.nb;
    let mut acc = [[_mm512_setzero_ps(); X]; W];
    let w = job.w.add(j0 * job.rb);
    let x = i0 * quads.quads;
    // Opaque to the compiler: constant indices let LLVM turn the byte permutes into VPERMT2W
    // and VPERMW (these offsets are even), three µops where VPERMT2B and VPERMB take one.
    let [nibbles, scales, mins] = std::hint::black_box(quad_indices::<F>());
    let low = _mm512_set1_epi8(0x0F);
    let ahead = w.wrapping_add(PREFETCH_TILES * W * job.rb);
    let lines = (W * job.rb).div_ceil(64);
    let lines_per_quad = lines.div_ceil(quads.quads);
    for quad in 0..quads.quads {
        for line in (quad * lines_per_quad..).take(lines_per_quad) {
            if line < lines {
                // A hint: never faults, even past the matrix.
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line * 64) as *const i8);
            }
        }
        let b = 4 * quad;
        let blocks = (nb - b).min(4);
        let mut lo = [_mm512_setzero_si512(); W];
        let mut hi = [_mm512_setzero_si512(); W];
        let mut dw = [_mm512_setzero_ps(); W];
        let mut mw = [_mm512_setzero_ps(); W];
        for r in 0..W {
            let a = w.add(r * job.rb + b * F::BYTES);
            let (first, last) = match blocks {
                4 => (
                    _mm512_loadu_si512(a as _),
                    _mm512_loadu_si512(a.add(4 * F::BYTES - 64) as _),
                ),
                // Fewer than four blocks fit in 64 bytes; nothing is read past them.
                _ => (
                    _mm512_maskz_loadu_epi8((1u64 << (blocks * F::BYTES)) - 1, a as *const i8),
                    _mm512_setzero_si512(),
                ),
            };
            let u = _mm512_permutex2var_epi8(first, nibbles, last);
            lo[r] = _mm512_and_si512(u, low);
            hi[r] = _mm512_and_si512(_mm512_srli_epi16::<4>(u), low);
            let halves = |idx| _mm512_castsi512_si256(_mm512_permutexvar_epi8(idx, first));
            dw[r] = _mm512_cvtph_ps(halves(scales));
            if F::MIN {
                mw[r] = _mm512_cvtph_ps(halves(mins));
            }
        }
        for i in 0..X {
            let at = x + i * quads.quads + quad;
            let xlo = _mm512_loadu_si512(quads.halves.as_ptr().add(at * QUAD) as _);
            let xhi = _mm512_loadu_si512(quads.halves.as_ptr().add(at * QUAD + 64) as _);
            let dx = _mm512_loadu_ps(quads.scales.as_ptr().add(at * 16));
            let start = match F::BIAS {
                0 => _mm512_setzero_si512(),
                _ => _mm512_loadu_si512(quads.starts.as_ptr().add(at * 16) as _),
            };
            for r in 0..W {
                let ints = _mm512_dpbusd_epi32(start, lo[r], xlo);
                let ints = _mm512_dpbusd_epi32(ints, hi[r], xhi);
                let s = _mm512_mul_ps(dw[r], dx);
                acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), s, acc[r][i]);
                if F::MIN {
                    // min_w·(d_x·Σq_x), the term every weight of a block shares (in lane 4k).
                    let sums = _mm512_loadu_ps(quads.sums.as_ptr().add(at * 16));
                    acc[r][i] = _mm512_fmadd_ps(mw[r], sums, acc[r][i]);
                }
            }
        }
    }
    write_tile::<W, X>(job, &acc, j0, i0);
}

/// The tile's sums to out.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
#[inline]
unsafe fn write_tile<const W: usize, const X: usize>(
    job: &TileJob,
    acc: &[[__m512; X]; W],
    j0: usize,
    i0: usize,
) {
    for (r, row) in acc.iter().enumerate() {
        for (i, a) in row.iter().enumerate() {
            *job.out.add((i0 + i) * job.ldo + j0 + r) = _mm512_reduce_add_ps(*a);
        }
    }
}

/// One block format: its weights as unsigned values u (bytes, or nibbles two to a byte), valued
/// d·(u − BIAS) (+ the block's min), d the f16 at the block's start.
trait Format {
    const BYTES: usize;
    /// What u is offset by (0: none; Q4_0's 8 is `QuadActs::starts`' −8).
    const BIAS: u8;
    /// Whether blocks carry a min (the f16 after d, summed after the loop).
    const MIN: bool;
    /// Where a 4-bit block's 16 nibble bytes start (such blocks go four a step,
    /// `quad_tile`); None for byte blocks (two a step, `pair_tile`).
    const NIBBLES: Option<usize>;
}

struct Q8_0;
struct Q4_0;
struct Q4_1;

impl Format for Q8_0 {
    const BYTES: usize = 34;
    const BIAS: u8 = 128;
    const MIN: bool = false;
    const NIBBLES: Option<usize> = None;
}

impl Format for Q4_0 {
    const BYTES: usize = 18;
    const BIAS: u8 = 8;
    const MIN: bool = false;
    const NIBBLES: Option<usize> = Some(2);
}

impl Format for Q4_1 {
    const BYTES: usize = 20;
    const BIAS: u8 = 0;
    const MIN: bool = true;
    const NIBBLES: Option<usize> = Some(4);
}

/// Permute indices for a pair of byte blocks (68 bytes) loaded as the 64 bytes at its start and
/// the 64 ending at its end: [its q bytes (byte j of block k to lane 32k + j), as bytes; its
/// scales (block k's f16 to halves 8k..8k + 8), as words of the first load].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
unsafe fn pair_indices<F: Format>() -> [__m512i; 2] {
    let (mut bytes, mut scales) = ([0u8; 64], [0u16; 32]);
    for (l, b) in bytes.iter_mut().enumerate() {
        let (k, j) = (l / 32, l % 32);
        *b = match k {
            0 => 2 + j,
            _ => 64 + (F::BYTES + 2 + j - (2 * F::BYTES - 64)),
        } as u8;
    }
    for (l, h) in scales.iter_mut().enumerate().take(16) {
        *h = ((l / 8) * F::BYTES / 2) as u16;
    }
    [
        _mm512_loadu_si512(bytes.as_ptr() as _),
        _mm512_loadu_si512(scales.as_ptr() as _),
    ]
}

/// Byte permute indices for a quad of four 4-bit blocks (72 or 80 bytes): [its nibble bytes,
/// byte j of block k to lane 16k + j, from the 64 bytes at its start (blocks 0..3) and the 64
/// ending at its end (block 3); its scales d, block k's f16 in halves 4k..4k + 4; its mins (at
/// byte 2), the same way]. The scales and mins lie in the first 64 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
unsafe fn quad_indices<F: Format>() -> [__m512i; 3] {
    let q = F::NIBBLES.unwrap_or(0);
    let (mut nibbles, mut scales, mut mins) = ([0u8; 64], [0u8; 64], [0u8; 64]);
    for l in 0..64 {
        let (k, j) = (l / 16, l % 16);
        nibbles[l] = match k {
            3 => 64 + (3 * F::BYTES + q + j - (4 * F::BYTES - 64)),
            _ => k * F::BYTES + q + j,
        } as u8;
        // Half h (bytes 2h, 2h + 1) of the first 32 bytes holds block h / 4's f16.
        let (half, byte) = (l / 2 % 16, l % 2);
        scales[l] = ((half / 4) * F::BYTES + byte) as u8;
        mins[l] = scales[l] + 2;
    }
    let load = |a: &[u8; 64]| _mm512_loadu_si512(a.as_ptr() as _);
    [load(&nibbles), load(&scales), load(&mins)]
}
