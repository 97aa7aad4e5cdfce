//! Turning models into text: the autoregressive baseline here; the diffusion samplers of
//! Algorithm 2 build on the same filters.

pub mod autoregressive;
pub mod filter;
