//! The step-event stream of the diffusion samplers (style §6.14): after every forward and commit,
//! the sampler reports the canvas once; trace files, `--show-steps` and tests consume the same
//! events through a callback, so none of them reaches into the sampler loop.

/// One denoising step of one canvas. Slices borrow the sampler's state for the callback's duration.
#[derive(Debug, Clone, Copy)]
pub struct StepEvent<'a> {
    /// Index of the canvas in the batch.
    pub canvas: usize,
    /// 1-based number of the forward this event follows.
    pub step: usize,
    /// Forwards planned for this canvas (an upper bound under `--threshold`).
    pub total_steps: usize,
    /// The `xt` fed to this forward (the reference's trace row).
    pub input: &'a [u32],
    /// The shifted proposal `x0` after this forward; fixed and committed positions are frozen.
    pub proposal: &'a [u32],
    /// Each position's proposal before freezing: the reference's `x0` at every position (the
    /// current token where the head did not run).
    pub x0: &'a [u32],
    /// Log-probability of each proposed token after temperature; NaN where the head did not run.
    pub scores: &'a [f32],
    /// The score the commit rule ranks each proposal by (the families' `x0_p` / `confidence`);
    /// NaN where the head did not run.
    pub ranks: &'a [f32],
    /// Top-k confidence only: how many positions the schedule keeps masked (`cutoff_len`).
    pub kept_masked: Option<usize>,
    /// Positions committed by this step.
    pub committed: usize,
    /// The canvas after the commit; masked positions hold the mask id.
    pub tokens: &'a [u32],
    pub masked: &'a [bool],
}

/// A consumer of step events.
pub type OnStep<'f> = dyn FnMut(&StepEvent) + 'f;
