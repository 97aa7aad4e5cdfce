//! Scaled dot-product attention with grouped-query heads. On f32 CPU tensors one fused op does
//! the whole of it (attention_fused.rs); the composed form (two candle matmuls around the fused
//! or composed softmax of softmax.rs) is the reference and serves every other device.

use candle_core::{Result, Tensor};

use super::attention_fused::FusedAttention;
use super::cpu;
use super::custom;
use super::softmax::scaled_softmax;

/// The fused kernel applies: f32 CPU operands and a constant f32 [L, Lk] mask.
fn fusable(ts: &[&Tensor], bias: Option<&Tensor>) -> bool {
    cpu::fusable(ts) && bias.is_none_or(|b| cpu::fusable(&[b]) && !b.track_op() && b.rank() == 2)
}

/// q: [B, H, L, Dh], k and v: [B, K, Lk, Dh] with H a multiple of K; bias: [L, Lk] additive.
/// Returns [B, H, L, Dh]. Query head h uses key/value head h / (H/K), as HF's `repeat_kv`;
/// grouping the queries instead of repeating k and v avoids copying the cache.
/// `bf16_products`: a bf16 model's inference, whose fused CPU op multiplies Q·Kᵀ and P·V in
/// bf16 operands where dlm's GEMM path does (`FusedAttention::bf16_products`).
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    bf16_products: bool,
) -> Result<Tensor> {
    if fusable(&[q, k, v], bias) {
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let differentiated = q.track_op() || k.track_op() || v.track_op();
        let op = FusedAttention::new(scale, bias.cloned(), None)
            .bf16_products(bf16_products)
            .keep_probabilities(differentiated);
        // k and v are read in place (a cache's prefix view) wherever each row of Dh is
        // contiguous.
        let rows = |t: &Tensor| match t.stride().last() {
            Some(1) => Ok(t.clone()),
            _ => t.contiguous(),
        };
        return custom::apply(op, &[q, &rows(k)?, &rows(v)?]);
    }
    scaled_dot_product_attention_composed(q, k, v, bias)
}

/// The composed reference of `scaled_dot_product_attention`.
pub fn scaled_dot_product_attention_composed(
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

/// Self-attention over GPT-2's packed projection: qkv [B, L, 3D] split q | k | v, each into H
/// heads of D/H → [B, L, D] with the heads merged back. Fused on CPU, where the heads are read
/// in place; elsewhere split, attended and merged by `scaled_dot_product_attention_composed`.
/// `bf16_products` as for `scaled_dot_product_attention`.
pub fn packed_self_attention(
    qkv: &Tensor,
    n_head: usize,
    bias: Option<&Tensor>,
    bf16_products: bool,
) -> Result<Tensor> {
    let (b, l, d3) = qkv.dims3()?;
    let (d, dh) = (d3 / 3, d3 / 3 / n_head.max(1));
    if fusable(&[qkv], bias) {
        let op = FusedAttention::new(1.0 / (dh as f64).sqrt(), bias.cloned(), Some(n_head))
            .bf16_products(bf16_products)
            .keep_probabilities(qkv.track_op());
        return custom::apply(op, &[qkv]);
    }
    let heads = |i: usize| -> Result<Tensor> {
        qkv.narrow(2, i * d, d)?
            .reshape((b, l, n_head, dh))?
            .transpose(1, 2)?
            .contiguous() // [B, H, L, Dh]
    };
    let y = scaled_dot_product_attention_composed(&heads(0)?, &heads(1)?, &heads(2)?, bias)?;
    y.transpose(1, 2)?.reshape((b, l, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fused_check::{assert_fused_matches, max_diff, Tolerance};
    use crate::ops::AttentionMask;
    use candle_core::{DType, Device, Var};

    /// Fused against composed, value and every input gradient, with and without a mask.
    fn check(vars: &[&Var], f: impl Fn(bool, Option<&Tensor>) -> Result<Tensor>) -> Result<()> {
        let l = vars[0].dim(vars[0].rank() - 2)?;
        let causal = AttentionMask::Causal.bias(l, l, 0, DType::F32, &Device::Cpu)?;
        for bias in [None, causal] {
            let (fused, composed) = (f(true, bias.as_ref())?, f(false, bias.as_ref())?);
            let what = format!("mask {}", bias.is_some());
            assert_fused_matches(&what, vars, &fused, &composed, Tolerance::new(1e-5, 1e-5))?;
        }
        Ok(())
    }

    #[test]
    fn fused_grouped_attention_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 4, 7, 8), &dev)?)?;
        let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 2, 7, 8), &dev)?)?;
        let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 2, 7, 8), &dev)?)?;
        check(&[&q, &k, &v], |fused, bias| {
            let (q, k, v) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            match fused {
                true => scaled_dot_product_attention(q, k, v, bias, false),
                false => scaled_dot_product_attention_composed(q, k, v, bias),
            }
        })
    }

    /// A few queries (a decoding step: the per-group direct path) against the first 9 of 12
    /// positions of key/value buffers (a cache's prefix, read in place), grouped heads, with
    /// and without a causal mask offset by the cached positions.
    #[test]
    fn fused_attention_over_a_cache_prefix_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let (lk, cap) = (9, 12);
        let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 2, cap, 8), &dev)?)?;
        let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 2, cap, 8), &dev)?)?;
        let (kp, vp) = (k.narrow(2, 0, lk)?, v.narrow(2, 0, lk)?);
        assert!(!kp.is_contiguous());
        for l in 1..=5 {
            let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 6, l, 8), &dev)?)?;
            let causal = AttentionMask::Causal.bias(l, lk, lk - l, DType::F32, &dev)?;
            for bias in [None, causal] {
                let fused = scaled_dot_product_attention(&q, &kp, &vp, bias.as_ref(), false)?;
                let composed = scaled_dot_product_attention_composed(&q, &kp, &vp, bias.as_ref())?;
                let what = format!("{l} queries, mask {}", bias.is_some());
                // Nothing to differentiate: P in each task's scratch, the same values.
                let (qd, kd, vd) = (q.detach(), kp.detach(), vp.detach());
                let inference = scaled_dot_product_attention(&qd, &kd, &vd, bias.as_ref(), false)?;
                assert_eq!(max_diff(&inference, &fused)?, 0.0, "{what}: inference");
                let tol = Tolerance::new(1e-5, 1e-5);
                assert_fused_matches(&what, &[&q, &k, &v], &fused, &composed, tol)?;
            }
        }
        Ok(())
    }

    /// Decoding's few queries over many keys with three key/value heads on two threads: each
    /// head's keys split in spans merged after (`attend_direct`), against the composed path,
    /// also where a mask hides every key of a span.
    #[test]
    fn split_key_spans_match_composed() -> Result<()> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let dev = Device::Cpu;
            let lk = 100;
            let k = Tensor::randn(0f32, 1.0, (1, 3, lk, 16), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (1, 3, lk, 16), &dev)?;
            for l in 1..=4 {
                let q = Tensor::randn(0f32, 1.0, (1, 6, l, 16), &dev)?;
                let causal = AttentionMask::Causal.bias(l, lk, lk - l, DType::F32, &dev)?;
                // Keys before 60 hidden: the first span (50 keys) wholly.
                let padding: Vec<f32> = (0..l * lk)
                    .map(|i| if i % lk < 60 { f32::NEG_INFINITY } else { 0.0 })
                    .collect();
                let padding = Tensor::from_vec(padding, (l, lk), &dev)?;
                for (what, bias) in [
                    ("none", None),
                    ("causal", causal),
                    ("padding", Some(padding)),
                ] {
                    let what = format!("{l} queries, mask {what}");
                    inference_matches_composed(&q, &k, &v, bias.as_ref(), &what)?;
                }
            }
            Ok(())
        })
    }

    /// The fused forward (nothing to differentiate) within 1e-5 of the composed one.
    fn inference_matches_composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        what: &str,
    ) -> Result<()> {
        let fused = scaled_dot_product_attention(q, k, v, bias, false)?;
        let composed = scaled_dot_product_attention_composed(q, k, v, bias)?;
        let err = max_diff(&fused, &composed)?;
        assert!(err < 1e-5, "{what}: {err}");
        Ok(())
    }

    /// The decoding path's products in vector code (heads of 16 to 128; others portable),
    /// over spans of keys shorter than, equal to and longer than its blocks of 16, read from
    /// a cache's prefix in place, against the composed path.
    #[test]
    fn direct_kernel_matches_composed_on_head_sizes() -> Result<()> {
        let dev = Device::Cpu;
        for dh in [8, 16, 32, 64, 80, 128] {
            for lk in [1, 5, 16, 17, 40, 100] {
                let k = Tensor::randn(0f32, 1.0, (1, 2, lk + 3, dh), &dev)?.narrow(2, 0, lk)?;
                let v = Tensor::randn(0f32, 1.0, (1, 2, lk + 3, dh), &dev)?.narrow(2, 0, lk)?;
                for l in [1, 3] {
                    let q = Tensor::randn(0f32, 1.0, (1, 6, l, dh), &dev)?;
                    let causal =
                        AttentionMask::Causal.bias(l, lk, lk - l.min(lk), DType::F32, &dev)?;
                    for bias in [None, causal] {
                        let what = format!("dh {dh}, {lk} keys, {l} queries");
                        inference_matches_composed(&q, &k, &v, bias.as_ref(), &what)?;
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn fused_packed_attention_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 6, 3 * 12), &dev)?)?;
        check(&[&qkv], |fused, bias| {
            let x = qkv.as_tensor();
            match fused {
                true => packed_self_attention(x, 3, bias, false),
                // The composed path, reached through a non-CPU-f32 check: run it on f64.
                false => {
                    let bias = bias.map(|b| b.to_dtype(DType::F64)).transpose()?;
                    packed_self_attention(&x.to_dtype(DType::F64)?, 3, bias.as_ref(), false)?
                        .to_dtype(DType::F32)
                }
            }
        })
    }

    /// bf16 inference's attention (`bf16_products`), grouped and packed, over 70 query rows
    /// (enough for the bf16 kernel) with the causal mask: within bf16's rounding of the f32
    /// composed result (outputs are averages of values of about 1: 2⁻⁵ absolute), and, where
    /// the GEMM path multiplies in bf16, not equal to the f32 fused result (the bf16 products
    /// ran). The maximum error is printed.
    #[test]
    fn bf16_products_stay_within_bf16_rounding() -> Result<()> {
        let dev = Device::Cpu;
        let l = 70;
        let causal = AttentionMask::Causal.bias(l, l, 0, DType::F32, &dev)?;
        let bias = causal.as_ref();
        let q = Tensor::randn(0f32, 1.0, (1, 4, l, 16), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 2, l, 16), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, 2, l, 16), &dev)?;
        let qkv = Tensor::randn(0f32, 1.0, (1, l, 3 * 48), &dev)?;
        let cases = [
            (
                "grouped",
                scaled_dot_product_attention(&q, &k, &v, bias, true)?,
                scaled_dot_product_attention(&q, &k, &v, bias, false)?,
                scaled_dot_product_attention_composed(&q, &k, &v, bias)?,
            ),
            // The f32 fused packed form is checked against the composed one above.
            (
                "packed",
                packed_self_attention(&qkv, 3, bias, true)?,
                packed_self_attention(&qkv, 3, bias, false)?,
                packed_self_attention(&qkv, 3, bias, false)?,
            ),
        ];
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        let bf16_path = crate::ops::gemm::isa::gemm_path().bf16_products();
        for (what, bf16, f32_fused, reference) in cases {
            let err = max_diff(&bf16, &reference)?;
            println!("{what}: bf16 products max |Δ| {err:.2e} (bf16 path: {bf16_path})");
            assert!(err < 2f32.powi(-5), "{what}: {err}");
            assert_eq!(max_diff(&bf16, &f32_fused)? > 0.0, bf16_path, "{what}");
        }
        Ok(())
    }

    /// Mixed-precision training's attention (`bf16_products` with the probabilities kept): the
    /// gradients of q, k, v (grouped) and of the packed qkv, from a random upstream gradient
    /// over 70 causal query rows, within 2⁻⁶ of the largest f32 composed gradient (bf16 keeps 8
    /// bits; each product sums ≤ 70 rounded terms), and, where the GEMM path multiplies in bf16,
    /// not equal to the f32 fused gradients (the bf16 backward ran). The largest relative
    /// difference is printed.
    #[test]
    fn bf16_products_backward_stays_within_bf16_rounding() -> Result<()> {
        let dev = Device::Cpu;
        let l = 70;
        let causal = AttentionMask::Causal.bias(l, l, 0, DType::F32, &dev)?;
        let bias = causal.as_ref();
        let var =
            |shape: &[usize]| Var::from_tensor(&Tensor::randn(0f32, 1.0, shape.to_vec(), &dev)?);
        let (q, k, v) = (
            var(&[1, 4, l, 16])?,
            var(&[1, 2, l, 16])?,
            var(&[1, 2, l, 16])?,
        );
        let qkv = var(&[1, l, 3 * 48])?;
        let up = Tensor::randn(0f32, 1.0, (1, 4, l, 16), &dev)?;
        let up_packed = Tensor::randn(0f32, 1.0, (1, l, 48), &dev)?;
        let bf16_path = crate::ops::gemm::isa::gemm_path().bf16_products();
        let grads = |vars: &[&Var], y: Tensor, up: &Tensor| -> Result<Vec<Tensor>> {
            let g = (y * up)?.sum_all()?.backward()?;
            Ok(vars
                .iter()
                .map(|v| g.get(v).expect("gradient").clone())
                .collect())
        };
        let grouped = |bf16| {
            let (q_, k_, v_) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let y = scaled_dot_product_attention(q_, k_, v_, bias, bf16)?;
            grads(&[&q, &k, &v], y, &up)
        };
        let packed = |bf16| {
            let y = packed_self_attention(qkv.as_tensor(), 4, bias, bf16)?;
            grads(&[&qkv], y, &up_packed)
        };
        let (q_, k_, v_) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let composed = scaled_dot_product_attention_composed(q_, k_, v_, bias)?;
        let cases = [
            (
                "grouped",
                grouped(true)?,
                grouped(false)?,
                grads(&[&q, &k, &v], composed, &up)?,
            ),
            // The f32 fused packed form is checked against the composed one above.
            ("packed", packed(true)?, packed(false)?, packed(false)?),
        ];
        for (what, bf16, f32_fused, reference) in cases {
            for (i, ((b, f), r)) in bf16.iter().zip(&f32_fused).zip(&reference).enumerate() {
                let scale = r.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let err = max_diff(b, r)? / scale;
                println!("{what} input {i}: bf16 gradient max |Δ| {err:.2e} of the largest");
                assert!(err < 2f32.powi(-6), "{what} input {i}: {err}");
                assert_eq!(max_diff(b, f)? > 0.0, bf16_path, "{what} input {i}");
            }
        }
        Ok(())
    }
}
