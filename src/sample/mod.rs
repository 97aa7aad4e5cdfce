//! Turning models into text: the autoregressive baseline, and the diffusion samplers of
//! Algorithm 2 (reference-semantics §2) with their accelerations, on the same filters; LLaDA's
//! and Dream's own samplers run in the same loop.

pub mod autoregressive;
pub mod canvas;
pub mod denoise;
pub mod dream;
pub mod events;
pub mod family;
pub mod filter;
pub mod generation_config;
pub mod head_rows;
pub mod kv_reuse;
pub mod llada;
pub mod options;
pub mod proposal;
pub mod random_keep;
pub mod request;
pub mod schedule;
pub mod topk_confidence;
pub mod unmask;
