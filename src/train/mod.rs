//! Algorithm 1 and the loop around it: trainable parameters, the optimiser, one step.

pub mod adamw;
pub mod checkpoint;
pub mod distributed;
pub mod init;
pub mod lora;
pub mod objective;
pub mod params;
pub mod schedule;
pub mod step;
pub mod trainer;
pub mod zero;
