//! Algorithm 1 and the loop around it: trainable parameters, the optimiser, one step.

pub mod adamw;
pub mod params;
pub mod step;
