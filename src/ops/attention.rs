//! Scaled dot-product attention with grouped-query heads. The two products are candle matmuls;
//! scale, mask and softmax are one fused op on f32 CPU tensors (softmax.rs).

use candle_core::{Result, Tensor};

use super::softmax::scaled_softmax;

/// q: [B, H, L, Dh], k and v: [B, K, Lk, Dh] with H a multiple of K; bias: [L, Lk] additive.
/// Returns [B, H, L, Dh]. Query head h uses key/value head h / (H/K), as HF's `repeat_kv`;
/// grouping the queries instead of repeating k and v avoids copying the cache.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, h, l, dh) = q.dims4()?;
    let (_, kh, _lk, _) = k.dims4()?;
    let g = h / kh;
    let scale = 1.0 / (dh as f64).sqrt();
    let q = q.reshape((b, kh, g * l, dh))?;
    let scores = q.matmul(&k.t()?)?; // [B, K, G·L, Lk], unscaled
                                     // Scale, mask (bias row = query row mod L) and softmax in one op on CPU.
    let probs = scaled_softmax(&scores, scale, bias)?;
    probs.matmul(&v.contiguous()?)?.reshape((b, h, l, dh))
}
