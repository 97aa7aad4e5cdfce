//! Learning-rate schedules: linear warmup, then constant, cosine or linear decay.

use serde::{Deserialize, Serialize};

use crate::named::{display_and_from_str, Named};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    Constant,
    /// Cosine from the peak down to `min_lr_ratio`·peak at the last step (DiffuGPT's schedule).
    Cosine,
    Linear,
}

impl Named for Decay {
    const WHAT: &'static str = "schedule";
    const ALL: &'static [Self] = &[Self::Cosine, Self::Constant, Self::Linear];

    fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Cosine => "cosine",
            Self::Linear => "linear",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::Constant => "The peak rate after warmup",
            Self::Cosine => "Cosine decay to min_lr_ratio of the peak",
            Self::Linear => "Linear decay to min_lr_ratio of the peak",
        }
    }
}
display_and_from_str!(Decay);

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.min_lr_ratio;
        let factor = match self.decay {
            Decay::Constant => 1.0,
            Decay::Cosine => {
                floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Decay::Linear => floor + (1.0 - floor) * (1.0 - progress),
        };
        self.peak_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule {
            peak_lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            decay: Decay::Cosine,
            min_lr_ratio: 0.0,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert!(s.lr(110).abs() < 1e-12);
        let c = Schedule {
            decay: Decay::Constant,
            ..s
        };
        assert_eq!(c.lr(100), 1.0);
        let l = Schedule {
            decay: Decay::Linear,
            ..s
        };
        assert!((l.lr(60) - 0.5).abs() < 1e-12);
    }
}
