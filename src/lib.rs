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
//!
//! One line per layer, lowest first. A module uses modules of the layers below its own, never
//! one beside it or above: the model knows nothing of data, training or sampling, and only `cli`
//! knows the command line (clap). `tests/layering.rs` reads this block and checks every path in
//! `src/` against it.
//!
//! ```text
//! error, rng:                  the error type; seeded randomness
//! atomic, dist, named, report: crash-safe writes; data-parallel ranks; option names; run logs
//! ops:                         differentiable kernels
//! model:                       architectures, checkpoints, GGUF files
//! data, diffusion:             tokenizers, corpora, chat templates; noise, shift, loss, annealing
//! sample, train:               denoising and AR sampling; the training loop
//! eval, serve:                 the paper's benchmarks; the HTTP server
//! cli:                         the `dlm` commands
//! ```

pub mod atomic;
pub mod cli;
pub mod data;
pub mod diffusion;
pub mod dist;
pub mod error;
pub mod eval;
pub mod model;
pub mod named;
pub mod ops;
pub mod report;
pub mod rng;
pub mod sample;
pub mod serve;
pub mod train;

pub use error::{Error, Result};
