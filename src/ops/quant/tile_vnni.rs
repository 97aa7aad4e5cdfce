//! The AVX-512-VNNI product of a run of quantised weight rows with every int8 activation row:
//! tile_avx2.rs's scheme on 64-byte registers, two 32-element blocks per register, and one
//! VPDPBUSD (64 u8 × i8 products summed in fours into sixteen i32) where AVX2 needs
//! `maddubs` + `madd` (and two `sign`s for signed weights). Tiles are up to 4 weight rows × 2
//! activation rows, accumulated in registers across the whole of k; an odd last block runs
//! with the register's upper half zero.
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

/// Whether `ty` has a tiled kernel here.
pub fn tiled(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1)
}

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
}

/// Weight rows per tile (a multiple of it keeps every tile full).
pub const TILE_ROWS: usize = 4;

/// out[i·ldo + j] = x row i · w row j for the `w.len() / row_bytes` weight rows `w` and every
/// row of `acts`.
///
/// # Safety
/// `available()`; `tiled(ty)`; `w` holds whole rows of `acts.cols` elements; `out` has room
/// for `acts.rows()` rows of `ldo` ≥ (weight rows) floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn product(ty: QuantType, w: &[u8], acts: &QuantActs, out: &mut [f32], ldo: usize) {
    let rb = ty.row_bytes(acts.cols);
    let (nw, m) = (w.len() / rb, acts.rows());
    assert!(ldo >= nw && out.len() >= m.saturating_sub(1) * ldo + nw);
    let nb = acts.cols / ACT_BLOCK;
    // Per x row and block pair: the two blocks' scales d_x across the register's halves.
    let pairs = nb.div_ceil(2);
    let mut xd = vec![0f32; m * pairs * 16];
    for i in 0..m {
        for b in 0..nb {
            let (p, half) = (b / 2, b % 2);
            let at = (i * pairs + p) * 16 + 8 * half;
            xd[at..at + 8].fill(acts.d[i * nb + b]);
        }
    }
    let job = Job {
        w: w.as_ptr(),
        rb,
        nb,
        acts,
        xd: &xd,
        out: out.as_mut_ptr(),
        ldo,
    };
    match ty {
        QuantType::Q8_0 => job.all::<Q8_0>(nw, m),
        QuantType::Q4_0 => job.all::<Q4_0>(nw, m),
        _ => job.all::<Q4_1>(nw, m),
    }
}

/// One call's operands: weight rows `rb` bytes apart from `w`, the activations and their
/// expanded scales, the output.
struct Job<'a> {
    w: *const u8,
    rb: usize,
    nb: usize,
    acts: &'a QuantActs,
    xd: &'a [f32],
    out: *mut f32,
    ldo: usize,
}

/// Runs `$job.tile::<$f, W, X>` for the tile's actual (rows, x rows), each at most (4, 2).
macro_rules! dispatch {
    ($job:expr, $f:ty, $scales:expr, $j0:expr, $i0:expr, $rows:expr, $xrows:expr) => {
        match ($rows, $xrows) {
            (4, 2) => $job.tile::<$f, 4, 2>($scales, $j0, $i0),
            (4, _) => $job.tile::<$f, 4, 1>($scales, $j0, $i0),
            (3, 2) => $job.tile::<$f, 3, 2>($scales, $j0, $i0),
            (3, _) => $job.tile::<$f, 3, 1>($scales, $j0, $i0),
            (2, 2) => $job.tile::<$f, 2, 2>($scales, $j0, $i0),
            (2, _) => $job.tile::<$f, 2, 1>($scales, $j0, $i0),
            (_, 2) => $job.tile::<$f, 1, 2>($scales, $j0, $i0),
            _ => $job.tile::<$f, 1, 1>($scales, $j0, $i0),
        }
    };
}

impl Job<'_> {
    /// Every weight row against every x row, in tiles of at most 4 × 2.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn all<F: Format>(&self, nw: usize, m: usize) {
        const TW: usize = TILE_ROWS;
        // Per weight row of a tile: its block scales (and Q4_1's mins) as f32, read once, with
        // a zero past the last block so that an odd block count reads whole pairs.
        let stride = 2 * self.nb.div_ceil(2);
        let mut scales = vec![0f32; 2 * TW * stride];
        for j0 in (0..nw).step_by(TW) {
            let rows = (nw - j0).min(TW);
            for r in 0..rows {
                for b in 0..self.nb {
                    let block = self.w.add((j0 + r) * self.rb + b * F::BYTES);
                    scales[r * stride + b] = f16(block);
                    scales[(TW + r) * stride + b] = F::min(block);
                }
            }
            let (d, mins) = scales.split_at(TW * stride);
            for i0 in (0..m).step_by(2) {
                dispatch!(self, F, (d, mins, stride), j0, i0, rows, (m - i0).min(2));
            }
        }
    }

    /// Weight rows j0..j0 + W against x rows i0..i0 + X, accumulated in registers over every
    /// pair of blocks, then written to out.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    #[inline]
    #[allow(clippy::needless_range_loop)] // r and i index both operands and the output
    unsafe fn tile<F: Format, const W: usize, const X: usize>(
        &self,
        (d, mins, stride): (&[f32], &[f32], usize),
        j0: usize,
        i0: usize,
    ) {
        let (nb, cols) = (self.nb, self.acts.cols);
        let pairs = nb.div_ceil(2);
        let mut acc = [[_mm512_setzero_ps(); X]; W];
        let w = self.w.add(j0 * self.rb);
        let xq = self.acts.qs.as_ptr().add(i0 * cols);
        let xd = self.xd.as_ptr().add(i0 * pairs * 16);
        let bias = _mm512_set1_epi8(F::BIAS as i8);
        // Lanes 0..8 take the first of two scales, 8..16 the second.
        let halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        for p in 0..pairs {
            let b = 2 * p;
            let both = b + 1 < nb;
            let mut u = [_mm512_setzero_si512(); W];
            for (r, u) in u.iter_mut().enumerate() {
                let block = w.add(r * self.rb + b * F::BYTES);
                *u = F::unpack(block, both.then(|| block.add(F::BYTES)));
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
                let dx = _mm512_loadu_ps(xd.add((i * pairs + p) * 16));
                for r in 0..W {
                    let ints = _mm512_dpbusd_epi32(start, u[r], x);
                    let dw = _mm512_permutexvar_ps(
                        halves,
                        _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd(
                            d.as_ptr().add(r * stride + b) as *const f64,
                        ))),
                    );
                    acc[r][i] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), _mm512_mul_ps(dw, dx), acc[r][i]);
                }
            }
        }
        for r in 0..W {
            for i in 0..X {
                let mut sum = _mm512_reduce_add_ps(acc[r][i]);
                if F::MIN {
                    // Σ_blocks min_w·(d_x·Σq_x), the term every weight of a block shares.
                    let (o, sx) = (&mins[r * stride..r * stride + nb], self.acts.row(i0 + i).s);
                    sum += o.iter().zip(sx).map(|(a, b)| a * b).sum::<f32>();
                }
                *self.out.add((i0 + i) * self.ldo + j0 + r) = sum;
            }
        }
    }
}

/// The f16 at `p`, by F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn f16(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// One block format: its weights as unsigned bytes u, valued d·(u − BIAS) (+ the block's min).
trait Format {
    const BYTES: usize;
    /// What u is offset by (0: none).
    const BIAS: u8;
    /// Whether blocks carry a min (summed after the loop).
    const MIN: bool;
    /// Blocks `a` and `b` (or zeros) as 64 u8 in element order.
    unsafe fn unpack(a: *const u8, b: Option<*const u8>) -> __m512i;
    /// The block's min per element.
    unsafe fn min(block: *const u8) -> f32;
}

struct Q8_0;
struct Q4_0;
struct Q4_1;

/// Two blocks' 16 nibble bytes at `a` and `b` as 64 bytes in element order: each block's low
/// nibbles (its elements 0..16), then its high ones (16..32).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn nibbles(a: *const u8, b: Option<*const u8>) -> __m512i {
    let lo = _mm_loadu_si128(a as *const __m128i);
    let hi = b.map_or(_mm_setzero_si128(), |b| {
        _mm_loadu_si128(b as *const __m128i)
    });
    let v = _mm256_set_m128i(hi, lo);
    let low = _mm256_set1_epi8(0x0F);
    let (l, h) = (
        _mm256_and_si256(v, low),
        _mm256_and_si256(_mm256_srli_epi16(v, 4), low),
    );
    // [a lo, b lo, a hi, b hi] → [a lo, a hi, b lo, b hi]
    let z = _mm512_inserti64x4(_mm512_castsi256_si512(l), h, 1);
    _mm512_shuffle_i64x2(z, z, 0b11_01_10_00)
}

impl Format for Q8_0 {
    const BYTES: usize = 34;
    const BIAS: u8 = 128;
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn unpack(a: *const u8, b: Option<*const u8>) -> __m512i {
        let lo = _mm256_loadu_si256(a.add(2) as _);
        let z = match b {
            Some(b) => _mm512_inserti64x4(
                _mm512_castsi256_si512(lo),
                _mm256_loadu_si256(b.add(2) as _),
                1,
            ),
            None => _mm512_zextsi256_si512(lo),
        };
        // q + 128 as an unsigned byte (a missing block's zeros become 128 · zero x).
        _mm512_xor_si512(z, _mm512_set1_epi8(-128))
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn min(_: *const u8) -> f32 {
        0.0
    }
}

impl Format for Q4_0 {
    const BYTES: usize = 18;
    const BIAS: u8 = 8;
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn unpack(a: *const u8, b: Option<*const u8>) -> __m512i {
        nibbles(a.add(2), b.map(|b| b.add(2)))
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn min(_: *const u8) -> f32 {
        0.0
    }
}

impl Format for Q4_1 {
    const BYTES: usize = 20;
    const BIAS: u8 = 0;
    const MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn unpack(a: *const u8, b: Option<*const u8>) -> __m512i {
        nibbles(a.add(4), b.map(|b| b.add(4)))
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn min(block: *const u8) -> f32 {
        f16(block.add(2))
    }
}
