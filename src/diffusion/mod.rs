//! The paper's diffusion mathematics as pure functions: no loops over steps, no model.

pub mod anneal;
pub mod loss;
pub mod noise;
pub mod shift;
