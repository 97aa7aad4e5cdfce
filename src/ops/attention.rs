//! Scaled dot-product attention with grouped-query heads, composed from differentiable ops.

use candle_core::{Result, Tensor, D};

/// Numerically stable softmax over the last dimension. The max is detached: subtracting any
/// constant leaves softmax unchanged, so it contributes no gradient.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

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
    let (_, kh, lk, _) = k.dims4()?;
    let g = h / kh;
    let scale = 1.0 / (dh as f64).sqrt();
    let q = q.reshape((b, kh, g * l, dh))?;
    let scores = (q.matmul(&k.t()?)? * scale)?; // [B, K, G·L, Lk]
    let scores = match bias {
        Some(bias) => scores
            .reshape((b, kh, g, l, lk))?
            .broadcast_add(bias)?
            .reshape((b, kh, g * l, lk))?,
        None => scores,
    };
    let probs = softmax_last_dim(&scores)?;
    probs.matmul(&v.contiguous()?)?.reshape((b, h, l, dh))
}
