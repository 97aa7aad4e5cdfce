//! dlm: diffusion language models adapted from autoregressive ones.
//!
//! Implements Gong et al., "Scaling Diffusion Language Models via Adaptation from Autoregressive
//! Models" (DiffuGPT / DiffuLLaMA, ICLR 2025); `shared/reference-semantics.md` is the specification.
//!
//! # Dimension legend
//! B batch, L sequence length, V vocabulary, D width, H query heads, K key/value heads, Dh head
//! dim, T denoising steps, t time in (0, 1].
//!
//! # Modules, in dependency order
//! `error`, `rng` → `ops` (differentiable kernels) → `model` (architectures, checkpoints) →
//! `data` (tokenizers) → `diffusion` (noise, shift, loss, annealing) → `sample` → `serve` → `cli`.
//! The model knows nothing of training or sampling. `dist` (communication between the ranks of a
//! data-parallel run) depends on `error` alone; `train` uses it.

pub mod atomic;
pub mod cli;
pub mod data;
pub mod diffusion;
pub mod dist;
pub mod error;
pub mod eval;
pub mod model;
pub mod ops;
pub mod report;
pub mod rng;
pub mod sample;
pub mod serve;
pub mod train;

pub use error::{Error, Result};
