//! What long jobs show people and machines: JSONL logs (and, later, plots).

pub mod jsonl;
pub mod plot;
