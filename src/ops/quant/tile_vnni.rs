//! The AVX-512-VNNI product of a run of quantised weight rows with every int8 activation row:
//! tile_avx2.rs's scheme on 64-byte registers, two 32-element blocks per register, and one
//! VPDPBUSD (64 u8 × i8 products summed in fours into sixteen i32) where AVX2 needs
//! `maddubs` + `madd` (and two `sign`s for signed weights). Tiles are up to 4 weight rows × 2
//! activation rows, accumulated in registers across the whole of k; an odd last block runs
//! with the register's upper half zero. The f16 scales of 16 blocks of a weight row are read
//! into one register, multiplied by x's 16 at once; each pair of blocks takes its two by a
//! permute. Two
//! 4-bit blocks unpack with one masked load and one VBMI byte permute (so the kernel needs
//! AVX-512-VBMI too: Ice Lake, Sapphire Rapids, Zen 4 have it; Cascade Lake takes AVX2).
//!
//! VPDPBUSD wants its first operand unsigned. Every weight is stored as d·(u − bias) or d·u +
//! min with u an unsigned byte: Q8_0 as its signed q with bias 128 (u = q ^ 0x80), Q4_0 as its
//! nibble with bias 8, Q4_1 as its nibble plus the block's min. A bias is taken off in
//! integers: each block's sums start from −bias·Σx (one VPDPBUSD of the bias bytes with x,
//! shared by the tile's weight rows), so Σ(u − bias)·x is exact. Q4_1's min is the f32 term
//! Σ_blocks min·(d_x·Σq_x) after the loop, as on AVX2. Q4_K keeps the per-row AVX2 path.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::blocks::{QuantActs, QuantType, ACT_BLOCK};
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
/// 4: 6.0, 8: 5.8-6.2), Q4_0 4.4-4.9 → 4.1-4.5.
const PREFETCH_TILES: usize = 2;

/// Blocks whose scales are read (and multiplied) together: one register of f32.
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

/// Runs `$job.tile::<$f, W, X>` for the tile's actual (rows, x rows), each at most (4, 2).
macro_rules! dispatch {
    ($job:expr, $f:ty, $mins:expr, $j0:expr, $i0:expr, $rows:expr, $xrows:expr) => {
        match ($rows, $xrows) {
            (4, 2) => tile::<$f, 4, 2>($job, $mins, $j0, $i0),
            (4, _) => tile::<$f, 4, 1>($job, $mins, $j0, $i0),
            (3, 2) => tile::<$f, 3, 2>($job, $mins, $j0, $i0),
            (3, _) => tile::<$f, 3, 1>($job, $mins, $j0, $i0),
            (2, 2) => tile::<$f, 2, 2>($job, $mins, $j0, $i0),
            (2, _) => tile::<$f, 2, 1>($job, $mins, $j0, $i0),
            (_, 2) => tile::<$f, 1, 2>($job, $mins, $j0, $i0),
            _ => tile::<$f, 1, 1>($job, $mins, $j0, $i0),
        }
    };
}

/// Every weight row against every x row, in tiles of at most 4 × 2.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
unsafe fn all<F: Format>(job: &TileJob) {
    let (nw, m) = (job.nw, job.m);
    const TW: usize = TILE_ROWS;
    // Q4_1: per weight row of a tile, its blocks' mins as f32, read once.
    let mut mins = vec![0f32; if F::MIN { TW * job.nb } else { 0 }];
    for j0 in (0..nw).step_by(TW) {
        let rows = (nw - j0).min(TW);
        if F::MIN {
            for r in 0..rows {
                for b in 0..job.nb {
                    let block = job.w.add((j0 + r) * job.rb + b * F::BYTES);
                    mins[r * job.nb + b] = f16(block.add(2));
                }
            }
        }
        for i0 in (0..m).step_by(2) {
            dispatch!(job, F, &mins, j0, i0, rows, (m - i0).min(2));
        }
    }
}

/// Weight rows j0..j0 + W against x rows i0..i0 + X, accumulated in registers over every
/// pair of blocks, then written to out. The scales d_w·d_x of 16 blocks at a time are one
/// register per (weight row, x row); each pair of blocks takes its two by a permute.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)] // r and i index both operands and the output
unsafe fn tile<F: Format, const W: usize, const X: usize>(
    job: &TileJob,
    mins: &[f32],
    j0: usize,
    i0: usize,
) {
    let (nb, cols) = (job.nb, job.acts.cols);
    let mut acc = [[_mm512_setzero_ps(); X]; W];
    let w = job.w.add(j0 * job.rb);
    let xq = job.acts.qs.as_ptr().add(i0 * cols);
    let xd = job.acts.d.as_ptr().add(i0 * nb);
    let bias = _mm512_set1_epi8(F::BIAS as i8);
    // Lanes 0..8 take the pair's first scale, 8..16 its second.
    let halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    // The tile PREFETCH_TILES on is asked for a few lines per pair of blocks, spread over
    // this tile's pairs: the hardware prefetcher alone left the product latency-bound.
    let ahead = w.wrapping_add(PREFETCH_TILES * W * job.rb);
    let lines = (W * job.rb).div_ceil(64);
    let lines_per_pair = lines.div_ceil(nb.div_ceil(2));
    for g in (0..nb).step_by(GROUP) {
        let count = (nb - g).min(GROUP);
        let valid: __mmask16 = if count == GROUP {
            !0
        } else {
            (1u16 << count) - 1
        };
        let mut scale = [[_mm512_setzero_ps(); X]; W];
        for r in 0..W {
            let dw = _mm512_cvtph_ps(scales::<F>(w.add(r * job.rb + g * F::BYTES), count));
            for i in 0..X {
                let dx = _mm512_maskz_loadu_ps(valid, xd.add(i * nb + g));
                scale[r][i] = _mm512_mul_ps(dw, dx);
            }
        }
        for p in 0..count.div_ceil(2) {
            let b = g + 2 * p;
            for line in (b / 2 * lines_per_pair..).take(lines_per_pair) {
                if line < lines {
                    // A hint: never faults, even past the matrix.
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64) as *const i8);
                }
            }
            let both = b + 1 < nb;
            let pick = _mm512_add_epi32(halves, _mm512_set1_epi32(2 * p as i32));
            let mut u = [_mm512_setzero_si512(); W];
            for (r, u) in u.iter_mut().enumerate() {
                *u = F::unpack(w.add(r * job.rb + b * F::BYTES), both);
            }
            for i in 0..X {
                let xp = xq.add(i * cols + b * ACT_BLOCK);
                let x = match both {
                    true => _mm512_loadu_si512(xp as _),
                    false => _mm512_zextsi256_si512(_mm256_loadu_si256(xp as _)),
                };
                // −bias·Σx in each group of four, where every weight row's sums start.
                let start = match F::BIAS {
                    0 => _mm512_setzero_si512(),
                    _ => _mm512_sub_epi32(
                        _mm512_setzero_si512(),
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, x),
                    ),
                };
                for r in 0..W {
                    let ints = _mm512_dpbusd_epi32(start, u[r], x);
                    let s = _mm512_permutexvar_ps(pick, scale[r][i]);
                    acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), s, acc[r][i]);
                }
            }
        }
    }
    for r in 0..W {
        for i in 0..X {
            let mut sum = _mm512_reduce_add_ps(acc[r][i]);
            if F::MIN {
                // Σ_blocks min_w·(d_x·Σq_x), the term every weight of a block shares.
                let (o, sx) = (&mins[r * nb..(r + 1) * nb], job.acts.row(i0 + i).s);
                sum += o.iter().zip(sx).map(|(a, b)| a * b).sum::<f32>();
            }
            *job.out.add((i0 + i) * job.ldo + j0 + r) = sum;
        }
    }
}

/// The f16 scales of the `count` ≤ 16 blocks from `row` (zeros after them), as 16 halves. Read
/// one by one and packed four to a 64-bit word in general registers: a gather of 16, or 16
/// stores and one vector load (which store forwarding cannot serve), made the whole M = 1
/// product about 1.5× slower on the Xeon measured.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
unsafe fn scales<F: Format>(row: *const u8, count: usize) -> __m256i {
    let half = |k: usize| match k < count {
        true => (row.add(k * F::BYTES) as *const u16).read_unaligned() as u64,
        false => 0,
    };
    let four =
        |k: usize| (half(k) | half(k + 1) << 16 | half(k + 2) << 32 | half(k + 3) << 48) as i64;
    _mm256_set_epi64x(four(12), four(8), four(4), four(0))
}

/// The f16 at `p`, by F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
unsafe fn f16(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// One block format: its weights as unsigned bytes u, valued d·(u − BIAS) (+ the block's min),
/// d the f16 at the block's start.
trait Format {
    const BYTES: usize;
    /// What u is offset by (0: none).
    const BIAS: u8;
    /// Whether blocks carry a min (the f16 after d, summed after the loop).
    const MIN: bool;
    /// The block at `a` and (if `both`) the next one, as 64 u8 in element order (zeros for a
    /// missing second block).
    unsafe fn unpack(a: *const u8, both: bool) -> __m512i;
}

struct Q8_0;
struct Q4_0;
struct Q4_1;

/// Two 4-bit blocks from `a` (the next `BYTES` on, if `both`), their 16 nibble bytes at
/// offset `q` of each, as 64 bytes in element order: each block's low nibbles (its elements
/// 0..16), then its high ones (16..32). One masked load (nothing read past the blocks), one
/// byte permute to put each block's 16 bytes twice, one shift of the high copies.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
unsafe fn nibbles<const BYTES: usize, const Q: usize>(a: *const u8, both: bool) -> __m512i {
    let len = if both { 2 * BYTES } else { BYTES };
    let raw = _mm512_maskz_loadu_epi8((1u64 << len) - 1, a as *const i8);
    // Lane l takes byte Q + l % 16 of block l / 32.
    let mut idx = [0u8; 64];
    for (l, v) in idx.iter_mut().enumerate() {
        *v = ((l / 32) * BYTES + Q + l % 16) as u8;
    }
    let picked = _mm512_permutexvar_epi8(_mm512_loadu_si512(idx.as_ptr() as _), raw);
    // 16-bit words 8..16 and 24..32 (the high copies) shift right by 4.
    let shifts = _mm512_set_epi16(
        4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0,
        0, 0,
    );
    _mm512_and_si512(_mm512_srlv_epi16(picked, shifts), _mm512_set1_epi8(0x0F))
}

impl Format for Q8_0 {
    const BYTES: usize = 34;
    const BIAS: u8 = 128;
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
    unsafe fn unpack(a: *const u8, both: bool) -> __m512i {
        let lo = _mm256_loadu_si256(a.add(2) as _);
        let z = match both {
            true => _mm512_inserti64x4(
                _mm512_castsi256_si512(lo),
                _mm256_loadu_si256(a.add(Self::BYTES + 2) as _),
                1,
            ),
            false => _mm512_zextsi256_si512(lo),
        };
        // q + 128 as an unsigned byte (a missing block's zeros become 128 · zero x).
        _mm512_xor_si512(z, _mm512_set1_epi8(-128))
    }
}

impl Format for Q4_0 {
    const BYTES: usize = 18;
    const BIAS: u8 = 8;
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
    unsafe fn unpack(a: *const u8, both: bool) -> __m512i {
        nibbles::<18, 2>(a, both)
    }
}

impl Format for Q4_1 {
    const BYTES: usize = 20;
    const BIAS: u8 = 0;
    const MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
    unsafe fn unpack(a: *const u8, both: bool) -> __m512i {
        nibbles::<20, 4>(a, both)
    }
}
