//! AVX2 dot products of one quantised weight row with one int8 activation row, the way ggml's
//! x86 kernels do it: 32 weights widened to bytes in one register, `maddubs` (u8 × i8 → pairs
//! of i16) then `madd` by ones (→ eight i32), converted to f32 and accumulated with the block's
//! scale by FMA. `maddubs` needs an unsigned left operand: 4-bit weights are unsigned nibbles,
//! and signed weights pass |w| with the sign moved onto x (`sign_epi8`). No i16 saturates:
//! |w| ≤ 128 and |x| ≤ 127 give pairs of at most 32 512.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::blocks::{scale_min_k4, ActRow, QuantType, ACT_BLOCK};

/// Σ w·x over one row, as `dot_scalar::dot` (same blocks, float sums in another order).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(ty: QuantType, w: &[u8], a: ActRow<'_>) -> f32 {
    match ty {
        QuantType::Q8_0 => dot_q8_0(w, a),
        QuantType::Q4_0 => dot_q4_0(w, a),
        QuantType::Q4_1 => dot_q4_1(w, a),
        QuantType::Q4K => dot_q4_k(w, a),
    }
}

/// The f16 at byte `i` of `b`, converted by F16C (exact, as the software conversion).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Eight partial sums of u·x (u unsigned bytes, x signed), as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_u8_i8(u: __m256i, x: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(u, x);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Eight partial sums of w·x, both signed.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_i8_i8(w: __m256i, x: __m256i) -> __m256 {
    sum_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

/// 16 nibble bytes as 32 bytes: the low nibbles (elements 0..16), then the high ones (16..32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles_16(p: *const u8) -> __m256i {
    let lo = _mm_loadu_si128(p as *const __m128i);
    let hi = _mm_srli_epi16(lo, 4);
    _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_x(a: ActRow<'_>, block: usize) -> __m256i {
    let x = &a.qs[block * ACT_BLOCK..(block + 1) * ACT_BLOCK];
    _mm256_loadu_si256(x.as_ptr() as *const __m256i)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (i, b) in w.chunks_exact(34).enumerate() {
        let q = _mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i);
        let scale = _mm256_set1_ps(f16_at(b, 0) * a.d[i]);
        acc = _mm256_fmadd_ps(scale, sum_i8_i8(q, load_x(a, i)), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let eight = _mm256_set1_epi8(8);
    for (i, b) in w.chunks_exact(18).enumerate() {
        let q = _mm256_sub_epi8(nibbles_16(b[2..18].as_ptr()), eight);
        let scale = _mm256_set1_ps(f16_at(b, 0) * a.d[i]);
        acc = _mm256_fmadd_ps(scale, sum_i8_i8(q, load_x(a, i)), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (i, b) in w.chunks_exact(20).enumerate() {
        let q = nibbles_16(b[4..20].as_ptr());
        let scale = _mm256_set1_ps(f16_at(b, 0) * a.d[i]);
        acc = _mm256_fmadd_ps(scale, sum_u8_i8(q, load_x(a, i)), acc);
        mins += f16_at(b, 2) * a.s[i];
    }
    hsum(acc) + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let low = _mm256_set1_epi8(0x0F);
    for (sb, b) in w.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for (c, q) in qs.chunks_exact(32).enumerate() {
            let v = _mm256_loadu_si256(q.as_ptr() as *const __m256i);
            let lo = _mm256_and_si256(v, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            for (j, q4) in [(2 * c, lo), (2 * c + 1, hi)] {
                let blk = sb * 8 + j;
                let (sc, m) = scale_min_k4(j, scales);
                let scale = _mm256_set1_ps(d * sc as f32 * a.d[blk]);
                acc = _mm256_fmadd_ps(scale, sum_u8_i8(q4, load_x(a, blk)), acc);
                mins += dmin * m as f32 * a.s[blk];
            }
        }
    }
    hsum(acc) - mins
}
