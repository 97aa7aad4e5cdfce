//! The AVX2 product of a run of quantised weight rows with every int8 activation row, in tiles of
//! up to 3 weight rows × 2 activation rows (× 1 for Q8_0, whose weight blocks take two
//! registers) accumulated in registers across the whole of k. A weight block is unpacked once
//! per tile and used for every x row of it, an x block once for every weight row; per (weight
//! row, x row, block) the work is `maddubs` + `madd` (32 int8 products into eight i32), one
//! convert, and one multiply-add by the two blocks' scales. Each weight row's block scales are
//! read into f32 once per tile, for every x row. (The per-row dot products of dot_avx2.rs pay a
//! call, a horizontal sum and the unpacking per pair instead; measured 2-2.5× slower at M = 256.)
//!
//! `maddubs` wants its left operand unsigned. A 4-bit block's value is d·u + offset with its
//! nibbles u ∈ 0..16 (Q4_0: offset −8·d; Q4_1: its minimum), so Σ w·x = d·Σu·x + offset·Σx: the
//! integer part goes through `maddubs` as it is, and Σ_blocks offset·(d_x·Σq_x) is one f32 dot
//! product per (weight row, x row) after the loop, into the same accumulator. Q8_0's signed weights go in as |q| with
//! their signs moved onto x. Q4_K keeps the per-row path.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::blocks::{QuantActs, QuantType, ACT_BLOCK};
use super::dot_avx2::{hsum, nibbles_16};
use super::TileJob;

/// Whether `ty` has a tiled kernel.
pub fn tiled(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1)
}

/// out[i·ldo + j] = x row i · w row j for the `w.len() / row_bytes` weight rows `w` and every
/// row of `acts`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `tiled(ty)`; `w` holds whole rows of `acts.cols` elements;
/// `out` has room for `acts.rows()` rows of `ldo` ≥ (weight rows) floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn product(ty: QuantType, w: &[u8], acts: &QuantActs, out: &mut [f32], ldo: usize) {
    let job = TileJob::new(ty, w, acts, out, ldo);
    match ty {
        QuantType::Q8_0 => all::<Q8_0>(&job),
        QuantType::Q4_0 => all::<Q4_0>(&job),
        _ => all::<Q4_1>(&job),
    }
}

/// Runs `$job.tile::<$f, W, X>` for the tile's actual (rows, x rows), each at most (3, 2).
macro_rules! dispatch {
    ($job:expr, $f:ty, $scales:expr, $j0:expr, $i0:expr, $rows:expr, $xrows:expr) => {
        match ($rows, $xrows) {
            (3, 2) => tile::<$f, 3, 2>($job, $scales, $j0, $i0),
            (3, _) => tile::<$f, 3, 1>($job, $scales, $j0, $i0),
            (2, 2) => tile::<$f, 2, 2>($job, $scales, $j0, $i0),
            (2, _) => tile::<$f, 2, 1>($job, $scales, $j0, $i0),
            (_, 2) => tile::<$f, 1, 2>($job, $scales, $j0, $i0),
            _ => tile::<$f, 1, 1>($job, $scales, $j0, $i0),
        }
    };
}

/// How many weight tiles ahead of the one being multiplied the kernel prefetches.
const PREFETCH_TILES: usize = 2;

/// Every weight row against every x row, in tiles of at most 3 × 2.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn all<F: Format>(job: &TileJob) {
    let (nw, m) = (job.nw, job.m);
    const TW: usize = 3;
    let tx = if F::PAIRS { 2 } else { 1 };
    // Per weight row of a tile: its block scales (and offsets) as f32, read once.
    let mut scales = vec![0f32; 2 * TW * job.nb];
    for j0 in (0..nw).step_by(TW) {
        let rows = (nw - j0).min(TW);
        for r in 0..rows {
            for b in 0..job.nb {
                let block = job.w.add((j0 + r) * job.rb + b * F::BYTES);
                scales[r * job.nb + b] = f16(block);
                scales[(TW + r) * job.nb + b] = F::offset(block);
            }
        }
        let (d, offsets) = scales.split_at(TW * job.nb);
        for i0 in (0..m).step_by(tx) {
            dispatch!(job, F, (d, offsets), j0, i0, rows, (m - i0).min(tx));
        }
    }
}

/// Weight rows j0..j0 + W against x rows i0..i0 + X, accumulated in registers over every
/// block, then written to out.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)] // r and i index both operands and the output
unsafe fn tile<F: Format, const W: usize, const X: usize>(
    job: &TileJob,
    (d, offsets): (&[f32], &[f32]),
    j0: usize,
    i0: usize,
) {
    let (nb, cols) = (job.nb, job.acts.cols);
    let mut acc = [[_mm256_setzero_ps(); X]; W];
    let w = job.w.add(j0 * job.rb);
    let xq = job.acts.qs.as_ptr().add(i0 * cols);
    let xd = job.acts.d.as_ptr().add(i0 * nb);
    // As in tile_vnni.rs: the tile PREFETCH_TILES on, a few lines per block.
    let ahead = w.wrapping_add(PREFETCH_TILES * W * job.rb);
    let lines = (W * job.rb).div_ceil(64);
    let lines_per_block = lines.div_ceil(nb);
    for b in 0..nb {
        for line in (b * lines_per_block..).take(lines_per_block) {
            if line < lines {
                // A hint: never faults, even past the matrix.
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64) as *const i8);
            }
        }
        let mut wv = [(_mm256_setzero_si256(), _mm256_setzero_si256()); W];
        for (r, wv) in wv.iter_mut().enumerate() {
            *wv = F::unpack(w.add(r * job.rb + b * F::BYTES));
        }
        for i in 0..X {
            let x = _mm256_loadu_si256(xq.add(i * cols + b * ACT_BLOCK) as _);
            let dx = _mm256_broadcast_ss(&*xd.add(i * nb + b));
            for r in 0..W {
                let ints = F::dot(wv[r], x);
                let s = _mm256_mul_ps(dx, _mm256_broadcast_ss(d.get_unchecked(r * nb + b)));
                acc[r][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), s, acc[r][i]);
            }
        }
    }
    for r in 0..W {
        for i in 0..X {
            let mut v = acc[r][i];
            let mut tail = 0.0;
            if F::OFFSET {
                // Σ_blocks offset_w·(d_x·Σq_x), the term every weight of a block shares,
                // eight blocks at a time into the same lanes (one horizontal sum for both).
                let (o, sx) = (&offsets[r * nb..(r + 1) * nb], job.acts.row(i0 + i).s);
                let whole = nb - nb % 8;
                for b in (0..whole).step_by(8) {
                    let (ov, sv) = (
                        _mm256_loadu_ps(o.as_ptr().add(b)),
                        _mm256_loadu_ps(sx.as_ptr().add(b)),
                    );
                    v = _mm256_fmadd_ps(ov, sv, v);
                }
                tail = o[whole..]
                    .iter()
                    .zip(&sx[whole..])
                    .map(|(a, b)| a * b)
                    .sum();
            }
            *job.out.add((i0 + i) * job.ldo + j0 + r) = hsum(v) + tail;
        }
    }
}

/// The f16 at `p`, by F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// One block format's integer dot product of 32 weights with 32 int8 activations. A block's
/// value is d·u + offset with u unsigned (Q4_0: offset −8d; Q4_1: its minimum), except Q8_0's,
/// which is signed d·q.
trait Format {
    const BYTES: usize;
    /// Whether blocks carry an offset (summed after the loop).
    const OFFSET: bool;
    /// Whether two x rows fit a tile (registers: Q8_0 keeps two vectors per weight block).
    const PAIRS: bool;
    /// The block's weights as `dot` takes them.
    unsafe fn unpack(block: *const u8) -> (__m256i, __m256i);
    /// The block's offset per element.
    unsafe fn offset(block: *const u8) -> f32;
    /// Eight i32 partial sums of u·x (q·x for Q8_0).
    unsafe fn dot(w: (__m256i, __m256i), x: __m256i) -> __m256i;
}

struct Q8_0;
struct Q4_0;
struct Q4_1;

/// Pairs of u·x summed to eight i32 (u unsigned bytes, x signed).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn madd_u8_i8(u: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
}

impl Format for Q8_0 {
    const BYTES: usize = 34;
    const OFFSET: bool = false;
    const PAIRS: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(block: *const u8) -> (__m256i, __m256i) {
        let q = _mm256_loadu_si256(block.add(2) as _);
        (_mm256_sign_epi8(q, q), q)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn offset(_: *const u8) -> f32 {
        0.0
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot((abs, q): (__m256i, __m256i), x: __m256i) -> __m256i {
        // |q|·(x·sign q) = q·x; |q| ≤ 128 and |x| ≤ 127 keep each i16 pair sum in range.
        madd_u8_i8(abs, _mm256_sign_epi8(x, q))
    }
}

impl Format for Q4_0 {
    const BYTES: usize = 18;
    const OFFSET: bool = true;
    const PAIRS: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(block: *const u8) -> (__m256i, __m256i) {
        let u = nibbles_16(block.add(2));
        (u, u)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn offset(block: *const u8) -> f32 {
        -8.0 * f16(block)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot((u, _): (__m256i, __m256i), x: __m256i) -> __m256i {
        madd_u8_i8(u, x)
    }
}

impl Format for Q4_1 {
    const BYTES: usize = 20;
    const OFFSET: bool = true;
    const PAIRS: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(block: *const u8) -> (__m256i, __m256i) {
        let u = nibbles_16(block.add(4));
        (u, u)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn offset(block: *const u8) -> f32 {
        f16(block.add(2))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot((u, _): (__m256i, __m256i), x: __m256i) -> __m256i {
        madd_u8_i8(u, x)
    }
}
