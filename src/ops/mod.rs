//! Differentiable building blocks. Every op here is composed from candle primitives that carry
//! gradients, so the same code trains on CPU and CUDA. candle-nn's fused `softmax_last_dim`,
//! `layer_norm`, `rms_norm` and `rope*` are deliberately not used: they have no backward pass.

mod activations;
mod attention;
mod attention_fused;
mod attention_mask;
pub(crate) mod cpu;
mod cross_entropy;
mod custom;
mod dropout;
#[cfg(test)]
mod fused_check;
pub mod gemm;
mod linear;
mod linear_bf16;
mod linear_fused;
mod norm;
mod norm_fused;
mod packed_linear;
pub mod quant;
mod rope;
mod rope_fused;
mod softmax;
pub mod team;

pub use activations::{gelu_new, silu, swiglu};
pub use attention::{
    packed_self_attention, scaled_dot_product_attention, scaled_dot_product_attention_composed,
};
pub use attention_mask::AttentionMask;
pub use cross_entropy::cross_entropy;
pub use dropout::{maybe_dropout, Dropout};
pub use linear::{Embedding, Linear, WeightLayout};
pub use norm::{LayerNorm, RmsNorm};
pub use packed_linear::Greedy;
pub use rope::Rope;
pub use softmax::{scaled_softmax, scaled_softmax_composed, softmax_last_dim};
