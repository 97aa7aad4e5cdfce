//! Algorithm 1 and the loop around it: trainable parameters, the optimiser, one step, and a
//! whole run (`run`) in its directory (`run_dir`).

pub mod adamw;
pub mod base;
pub mod checkpoint;
pub mod distributed;
pub mod init;
pub mod lora;
pub mod objective;
pub mod params;
pub mod run;
pub mod run_dir;
pub mod schedule;
pub mod sources;
pub mod step;
pub mod trainer;
pub mod zero;
