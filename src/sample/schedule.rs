//! The denoising schedule shared by every commit rule: the generated positions split into
//! phases (semi-autoregressive blocks, or one phase without blocks) that share the T steps, and
//! where each canvas is in them.

use crate::error::{Error, Result};

/// A stretch of the schedule: these positions unmask over `steps` forwards.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub positions: Vec<usize>,
    pub steps: usize,
}

/// Splits the generated positions into semi-autoregressive blocks of `block_length` (one phase
/// without blocks) and shares `steps` among them, earlier blocks taking the remainder. Each
/// phase gets at least one step and at most one per position, because every step commits at
/// least one token: steps beyond the masked count are clamped (the CLI warns).
pub fn plan(generated: &[usize], steps: usize, block_length: Option<usize>) -> Result<Vec<Phase>> {
    if steps == 0 {
        return Err(Error::option("steps", "must be at least 1"));
    }
    if generated.is_empty() {
        return Ok(vec![]);
    }
    let block = match block_length {
        Some(0) => return Err(Error::option("block_length", "must be at least 1")),
        Some(b) => b,
        None => generated.len(),
    };
    let blocks: Vec<&[usize]> = generated.chunks(block).collect();
    let (base, extra) = (steps / blocks.len(), steps % blocks.len());
    Ok(blocks
        .iter()
        .enumerate()
        .map(|(k, b)| Phase {
            positions: b.to_vec(),
            steps: (base + usize::from(k < extra)).clamp(1, b.len()),
        })
        .collect())
}

/// Where one canvas is in its schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    phases: Vec<Phase>,
    phase: usize,
    /// Steps done in the current phase.
    step: usize,
    /// Forwards done so far, and in all.
    pub done: usize,
    pub total: usize,
}

impl Progress {
    /// At the start of `phases` (from `plan`, or a family sampler's own schedule).
    pub fn new(phases: Vec<Phase>) -> Self {
        let total = phases.iter().map(|p| p.steps).sum();
        Self {
            phases,
            phase: 0,
            step: 0,
            done: 0,
            total,
        }
    }

    /// Steps done in the current phase: the index of the next one.
    pub fn step_in_phase(&self) -> usize {
        self.step
    }

    /// The current phase; None once the canvas is finished or stopped.
    pub fn phase(&self) -> Option<&Phase> {
        self.phases.get(self.phase)
    }

    pub fn running(&self) -> bool {
        self.phase < self.phases.len()
    }

    /// Leaves the schedule as it is: the canvas takes no more steps.
    pub fn stop(&mut self) {
        self.phase = self.phases.len();
    }

    /// The loop step t of the current phase, T−1 down to 0: after the forward at t = 0 every
    /// position still masked in the phase commits.
    pub fn t(&self) -> usize {
        let steps = self.phase().map_or(1, |p| p.steps);
        steps - 1 - self.step.min(steps - 1)
    }

    /// The span [first, last + 1) of the current phase (block): every position before it is
    /// decided. (len, len) once finished.
    pub fn span(&self, len: usize) -> (usize, usize) {
        match self.phase() {
            Some(ph) => {
                let first = ph.positions.iter().copied().min().unwrap_or(len);
                let last = ph.positions.iter().copied().max().unwrap_or(len);
                (first, last + 1)
            }
            None => (len, len),
        }
    }

    /// Counts a step; the phase ends when it has run its steps, or with `early_exit` as soon as
    /// `phase_done` (nothing left masked in it).
    pub fn advance(&mut self, phase_done: bool, early_exit: bool) {
        self.step += 1;
        self.done += 1;
        let steps = self.phase().map_or(0, |p| p.steps);
        if self.step >= steps || (early_exit && phase_done) {
            self.phase += 1;
            self.step = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_share_the_steps() {
        let g: Vec<usize> = (4..14).collect();
        let p = plan(&g, 5, Some(4)).unwrap();
        let steps: Vec<usize> = p.iter().map(|p| p.steps).collect();
        assert_eq!(steps, vec![2, 2, 1]);
        assert_eq!(p[2].positions, vec![12, 13]);
        // More steps than positions are clamped; zero steps are refused.
        assert_eq!(plan(&g, 50, None).unwrap()[0].steps, 10);
        assert!(plan(&g, 0, None).is_err());
        assert!(plan(&g, 3, Some(0)).is_err());
    }
}
