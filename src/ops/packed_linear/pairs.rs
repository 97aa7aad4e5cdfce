//! f32 operands rounded to bf16 (VCVTNE2PS2BF16, nearest even) straight into the layouts the bf16
//! kernels read, in registers: a training step packs every weight, every output gradient and
//! every transposed activation this way, and element by element (strided reads, a software
//! rounding each) that was a third of a bf16 step.
//!
//! - `pair_lines_from_rows`: b row-major, two rows' 16 columns → one pair line (one permute).
//! - `pair_lines_from_columns`: b column-major, 16 columns × 32 k → 16 pair lines (a transpose
//!   of 32-bit pairs).
//! - `rows_from_columns`: a transposed (xᵀ, dyᵀ for weight gradients), 16 rows × 16 k → the
//!   row-major bf16 rows the kernels stage (a transpose of f32, then one rounding per row).

use super::{LinePair, NR};
use std::arch::x86_64::*;

/// The permute that interleaves two 16-word halves: word 2c ← c, word 2c + 1 ← 16 + c.
const INTERLEAVE: [i16; 32] = {
    let mut idx = [0i16; 32];
    let mut c = 0;
    while c < 16 {
        idx[2 * c] = c as i16;
        idx[2 * c + 1] = 16 + c as i16;
        c += 1;
    }
    idx
};

/// Index tables of the 16 × 16 transpose's four rounds (bit b = 8, 4, 2, 1): registers i and
/// j = i + b (bit b of i clear) exchange the lanes where bit b of the register and of the lane
/// differ. `[round][0]` makes the new i, `[round][1]` the new j, from (i: 0..16, j: 16..32).
const SWAP: [[[i32; 16]; 2]; 4] = {
    let mut t = [[[0i32; 16]; 2]; 4];
    let mut round = 0;
    while round < 4 {
        let b = 8 >> round;
        let mut l = 0;
        while l < 16 {
            let low = l & b == 0;
            t[round][0][l] = if low { l } else { 16 + l - b } as i32;
            t[round][1][l] = if low { l + b } else { 16 + l } as i32;
            l += 1;
        }
        round += 1;
    }
    t
};

/// Transposes 16 registers of 16 32-bit lanes in place: lane l of register i ↔ lane i of
/// register l. Each round exchanges one bit between the register and the lane index.
///
/// # Safety
/// AVX-512 F is present (inlined into the kernels below, which enable it).
#[inline(always)]
unsafe fn transpose16(r: &mut [__m512i; 16]) {
    for (round, [lo, hi]) in SWAP.iter().enumerate() {
        let b = 8 >> round;
        let (lo, hi) = (
            _mm512_loadu_si512(lo.as_ptr().cast()),
            _mm512_loadu_si512(hi.as_ptr().cast()),
        );
        for i in (0..16).filter(|i| i & b == 0) {
            let (x, y) = (r[i], r[i + b]);
            r[i] = _mm512_permutex2var_epi32(x, lo, y);
            r[i + b] = _mm512_permutex2var_epi32(x, hi, y);
        }
    }
}

/// The first `n` (≤ 16) lanes set.
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// 16 f32 at p (the first `n`, zeros after) rounded to bf16 with the 16 at q: words 0..16 are p's,
/// 16..32 q's.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_two(p: *const f32, q: *const f32, n: usize) -> __m512i {
    let m = lanes(n);
    let v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m, q), _mm512_maskz_loadu_ps(m, p));
    std::mem::transmute::<__m512bh, __m512i>(v)
}

/// Pair lines of consecutive panels from b row-major (element (k, c) at `b[k·ld + c]`): line q
/// of panel g (at `out + g·stride`) holds rows 2q and 2q + 1 (zero past `k`) of columns
/// 16g..16g + 16 (zero past `cols`); `k.div_ceil(2)` lines a panel written. Each pair of rows is
/// read across all the panels at once: contiguous runs the prefetchers follow.
///
/// # Safety
/// AVX-512 F/BW and BF16 are present; b holds rows 0..k of `ld` floats (the first `cols` read);
/// `out` holds `cols.div_ceil(16)` panels `stride` ≥ `k.div_ceil(2)` lines apart.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn pair_lines_from_rows(
    b: *const f32,
    ld: usize,
    k: usize,
    cols: usize,
    (out, stride): (*mut LinePair, usize),
) {
    let interleave = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
    let zeros = [0f32; NR];
    for q in 0..k.div_ceil(2) {
        let even = b.add(2 * q * ld);
        let odd = (2 * q + 1 < k).then(|| b.add((2 * q + 1) * ld));
        for g in 0..cols.div_ceil(NR) {
            let odd = odd.map_or(zeros.as_ptr(), |o| o.add(g * NR));
            let halves = round_two(even.add(g * NR), odd, cols - g * NR);
            let line = _mm512_permutexvar_epi16(interleave, halves);
            _mm512_storeu_si512(out.add(g * stride + q).cast(), line);
        }
    }
}

/// Pair lines of a panel from b column-major (element (k, c) at `b[c·ld + k]`): as
/// `pair_lines_from_rows`, 32 k of 16 columns at a time.
///
/// # Safety
/// AVX-512 F/BW and BF16 are present; b holds columns 0..cols of `ld` floats (the first `k`
/// read); `out` holds `k.div_ceil(2)` lines.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn pair_lines_from_columns(
    b: *const f32,
    ld: usize,
    k: usize,
    cols: usize,
    out: *mut LinePair,
) {
    let lines = k.div_ceil(2);
    for k0 in (0..k).step_by(2 * NR) {
        let n = k - k0;
        let mut r = [_mm512_setzero_si512(); 16];
        for (c, r) in r.iter_mut().enumerate().take(cols) {
            // Lane p of column c's register: its pair (k0 + 2p, k0 + 2p + 1).
            let col = b.add(c * ld + k0);
            let lo = _mm512_maskz_loadu_ps(lanes(n), col);
            // Masked-off lanes are never read, so the second half may start past b's end.
            let hi = _mm512_maskz_loadu_ps(lanes(n.saturating_sub(NR)), col.wrapping_add(NR));
            *r = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        }
        transpose16(&mut r);
        let q0 = k0 / 2;
        for (p, line) in r.iter().enumerate().take(lines - q0) {
            _mm512_storeu_si512(out.add(q0 + p).cast(), *line);
        }
    }
}

/// Rows of a transposed operand rounded to bf16: `out[i·ldo + q]` = a(i, q) = `a[q·ld + i]` for
/// i < rows and q < k; nothing else written. 16 k at a time across all the rows, so each run
/// of a is read whole.
///
/// # Safety
/// AVX-512 F/BW/VL and BF16 are present; a holds k runs of `ld` floats (the first `rows` read);
/// out holds `rows` rows of `ldo` u16, at least k of each.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn rows_from_columns(
    a: *const f32,
    ld: usize,
    rows: usize,
    k: usize,
    out: *mut u16,
    ldo: usize,
) {
    for q0 in (0..k).step_by(NR) {
        let n = (k - q0).min(NR);
        for i0 in (0..rows).step_by(NR) {
            let m = lanes(rows - i0);
            let mut r = [_mm512_setzero_si512(); 16];
            for (t, r) in r.iter_mut().enumerate().take(n) {
                *r = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, a.add((q0 + t) * ld + i0)));
                // The runs are far apart: without a prefetch of the next 16 k's, every load
                // waits for memory. (A prefetch past a's end is dropped, never a fault.)
                let next = a.wrapping_add((q0 + NR + t) * ld + i0);
                _mm_prefetch::<_MM_HINT_T0>(next.cast());
            }
            transpose16(&mut r);
            for (i, v) in r.iter().enumerate().take(rows - i0) {
                let bits = _mm512_cvtneps_pbh(_mm512_castsi512_ps(*v));
                _mm256_mask_storeu_epi16(
                    out.add((i0 + i) * ldo + q0).cast(),
                    lanes(n),
                    std::mem::transmute::<__m256bh, __m256i>(bits),
                );
            }
        }
    }
}
