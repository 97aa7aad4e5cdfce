//! Evaluation (reference-semantics §3): benchmark readers, metrics, multiple-choice scoring by
//! diffusion or AR log-likelihood, generation tasks by diffusion sampling or greedy decoding,
//! and the harness `dlm eval` drives. Data flows readers → tasks → harness → results.

pub mod code_exec;
pub mod generation;
pub mod harness;
pub mod metrics;
pub mod multiple_choice;
pub mod readers;
pub mod results;
pub mod score;
pub mod tasks;
