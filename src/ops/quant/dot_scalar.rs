//! The portable dot products of one quantised weight row with one int8 activation row: integer
//! sums per 32-element block, scaled and accumulated in f32. The reference for the SIMD paths.

use super::blocks::{f16_at, scale_min_k4, ActRow, QuantType, ACT_BLOCK};

/// Σ w·x over one row: `w` the row's blocks, `a` the activations (same length).
#[inline(never)] // Inlined into the row loop it compiled 3× slower (measured).
pub fn dot(ty: QuantType, w: &[u8], a: ActRow<'_>) -> f32 {
    match ty {
        QuantType::Q8_0 => dot_q8_0(w, a),
        QuantType::Q4_0 => dot_q4_0(w, a),
        QuantType::Q4_1 => dot_q4_1(w, a),
        QuantType::Q4K => dot_q4_k(w, a),
    }
}

/// Σ lo(q[j])·x[j] + hi(q[j])·x[j + off] over 16 or 32 nibble bytes, nibbles offset by `bias`.
fn nibble_sum(qs: &[u8], x_lo: &[i8], x_hi: &[i8], bias: i32) -> (i32, i32) {
    let mut lo = 0;
    let mut hi = 0;
    for ((&q, &a), &b) in qs.iter().zip(x_lo).zip(x_hi) {
        lo += ((q & 0x0F) as i32 - bias) * a as i32;
        hi += ((q >> 4) as i32 - bias) * b as i32;
    }
    (lo, hi)
}

fn dot_q8_0(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (i, b) in w.chunks_exact(34).enumerate() {
        let x = &a.qs[i * ACT_BLOCK..(i + 1) * ACT_BLOCK];
        let isum: i32 = b[2..]
            .iter()
            .zip(x)
            .map(|(&q, &x)| (q as i8 as i32) * x as i32)
            .sum();
        acc += f16_at(b, 0) * a.d[i] * isum as f32;
    }
    acc
}

fn dot_q4_0(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (i, b) in w.chunks_exact(18).enumerate() {
        let x = &a.qs[i * ACT_BLOCK..(i + 1) * ACT_BLOCK];
        let (lo, hi) = nibble_sum(&b[2..18], &x[..16], &x[16..], 8);
        acc += f16_at(b, 0) * a.d[i] * (lo + hi) as f32;
    }
    acc
}

fn dot_q4_1(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (i, b) in w.chunks_exact(20).enumerate() {
        let x = &a.qs[i * ACT_BLOCK..(i + 1) * ACT_BLOCK];
        let (lo, hi) = nibble_sum(&b[4..20], &x[..16], &x[16..], 0);
        acc += f16_at(b, 0) * a.d[i] * (lo + hi) as f32 + f16_at(b, 2) * a.s[i];
    }
    acc
}

fn dot_q4_k(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (sb, b) in w.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for (c, q) in qs.chunks_exact(32).enumerate() {
            // Sub-blocks 2c (low nibbles) and 2c + 1 (high), each one activation block.
            let (j1, j2) = (sb * 8 + 2 * c, sb * 8 + 2 * c + 1);
            let x1 = &a.qs[j1 * ACT_BLOCK..(j1 + 1) * ACT_BLOCK];
            let x2 = &a.qs[j2 * ACT_BLOCK..(j2 + 1) * ACT_BLOCK];
            let (lo, hi) = nibble_sum(q, x1, x2, 0);
            let (sc1, m1) = scale_min_k4(2 * c, scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
            acc += d * sc1 as f32 * a.d[j1] * lo as f32 - dmin * m1 as f32 * a.s[j1];
            acc += d * sc2 as f32 * a.d[j2] * hi as f32 - dmin * m2 as f32 * a.s[j2];
        }
    }
    acc
}
