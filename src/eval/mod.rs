//! Evaluation: scoring answers with a diffusion model (the reference's multiple-choice scorer).

pub mod score;
