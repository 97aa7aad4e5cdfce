//! Batches of fixed-length examples with a deterministic, resumable cursor (style §6.9 "exact
//! resume"; the data side of Algorithm 1, reference-semantics §1.6-1.7).
//!
//! Shuffling is windowed so that streaming still works: the loader reads `shuffle_buffer`
//! examples from the source, permutes that window with an RNG seeded by (seed, epoch, window
//! start), and hands them out; then reads the next window. (DiffuLLaMA likewise shuffles within
//! a buffer of `n_chunks` chunk files.) A buffer at least as large as the dataset gives a full
//! permutation per epoch; a buffer of 1 keeps the source order (validation).
//!
//! The whole cursor is [`LoaderState`]: epoch, where the current window starts in the source,
//! and the position inside it. Restoring rewinds the source, skips to the window start, reads
//! and permutes the window again, so `N steps` and `N/2 steps, save, restore, N/2 steps` give
//! identical batches. This requires a deterministic source, which every source here is.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// One fixed-length training example; `src_mask[i] = 1` marks a position that is never noised
/// (the SFT prompt, §1.7). Packed pre-training blocks have an all-zero mask (§1.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub src_mask: Vec<u8>,
}

/// B examples of length L each, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub ids: Vec<Vec<u32>>,
    pub src_mask: Vec<Vec<u8>>,
    /// The epoch the last example of the batch came from (0-based).
    pub epoch: u64,
}

/// A deterministic, rewindable stream of examples (one pass = one epoch).
pub trait ExampleSource {
    /// Back to the first example.
    fn rewind(&mut self) -> Result<()>;

    fn next_example(&mut self) -> Result<Option<Example>>;

    /// Skips up to `n` examples and returns how many were skipped. The default reads and drops
    /// them, which for a corpus means re-tokenising up to the cursor on resume.
    fn skip(&mut self, n: u64) -> Result<u64> {
        for i in 0..n {
            if self.next_example()?.is_none() {
                return Ok(i);
            }
        }
        Ok(n)
    }
}

/// A borrowed source, so a caller can keep the source (and its corpus counts) after the loader.
impl<S: ExampleSource + ?Sized> ExampleSource for &mut S {
    fn rewind(&mut self) -> Result<()> {
        (**self).rewind()
    }

    fn next_example(&mut self) -> Result<Option<Example>> {
        (**self).next_example()
    }

    fn skip(&mut self, n: u64) -> Result<u64> {
        (**self).skip(n)
    }
}

/// Examples held in memory (pre-tokenised data, tests, small SFT sets).
#[derive(Debug, Clone)]
pub struct VecSource {
    examples: Vec<Example>,
    cursor: usize,
}

impl VecSource {
    pub fn new(examples: Vec<Example>) -> Self {
        Self {
            examples,
            cursor: 0,
        }
    }

    /// Blocks with an all-zero `src_mask`.
    pub fn from_blocks(blocks: Vec<Vec<u32>>) -> Self {
        let examples = blocks
            .into_iter()
            .map(|ids| Example {
                src_mask: vec![0; ids.len()],
                ids,
            })
            .collect();
        Self::new(examples)
    }
}

impl ExampleSource for VecSource {
    fn rewind(&mut self) -> Result<()> {
        self.cursor = 0;
        Ok(())
    }

    fn next_example(&mut self) -> Result<Option<Example>> {
        let ex = self.examples.get(self.cursor).cloned();
        self.cursor += ex.is_some() as usize;
        Ok(ex)
    }

    fn skip(&mut self, n: u64) -> Result<u64> {
        let left = (self.examples.len() - self.cursor) as u64;
        let k = n.min(left);
        self.cursor += k as usize;
        Ok(k)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Examples per shuffle window; 1 disables shuffling.
    pub shuffle_buffer: usize,
    pub seed: u64,
}

/// Everything needed to continue exactly where a loader stopped; saved with checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub config: LoaderConfig,
    pub epoch: u64,
    /// Index in the source (within the epoch) of the current window's first example.
    pub window_start: u64,
    /// Next position to hand out in the current (permuted) window.
    pub pos_in_window: usize,
    /// Examples handed out since the start, over all epochs.
    pub examples_seen: u64,
}

pub struct Loader<S: ExampleSource> {
    source: S,
    state: LoaderState,
    window: Vec<Example>,
}

impl<S: ExampleSource> Loader<S> {
    pub fn new(source: S, config: LoaderConfig) -> Result<Self> {
        let state = LoaderState {
            config,
            epoch: 0,
            window_start: 0,
            pos_in_window: 0,
            examples_seen: 0,
        };
        Self::from_state(source, state)
    }

    /// Continues from a saved state. `source` must yield the same examples as the one the
    /// state was saved from.
    pub fn from_state(mut source: S, state: LoaderState) -> Result<Self> {
        let c = &state.config;
        if c.batch_size == 0 || c.shuffle_buffer == 0 {
            return Err(Error::Input(format!(
                "batch size ({}) and shuffle buffer ({}) must be at least 1",
                c.batch_size, c.shuffle_buffer
            )));
        }
        source.rewind()?;
        let skipped = source.skip(state.window_start)?;
        if skipped != state.window_start {
            return Err(Error::Input(format!(
                "cannot resume: the data has {skipped} examples but the saved cursor is at {}; \
                 was the corpus changed?",
                state.window_start
            )));
        }
        let mut loader = Self {
            source,
            state,
            window: Vec::new(),
        };
        // A fresh loader has read nothing yet; a resumed one re-reads its current window.
        if loader.state.examples_seen > 0 {
            let pos = loader.state.pos_in_window;
            loader.fill_window()?;
            if pos > loader.window.len() {
                return Err(Error::Input(
                    "cannot resume: the saved window position is past the data".into(),
                ));
            }
            loader.state.pos_in_window = pos;
        }
        Ok(loader)
    }

    pub fn state(&self) -> &LoaderState {
        &self.state
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    pub fn next_batch(&mut self) -> Result<Batch> {
        self.try_next_batch()?.ok_or_else(|| {
            Error::Input("the data yields no examples (corpus too small for one block?)".into())
        })
    }

    /// The next batch, or `None` when the data yields no examples at all (an empty split);
    /// a source that cannot be read is an error.
    pub fn try_next_batch(&mut self) -> Result<Option<Batch>> {
        let b = self.state.config.batch_size;
        let mut ids = Vec::with_capacity(b);
        let mut src_mask = Vec::with_capacity(b);
        for _ in 0..b {
            let Some(ex) = self.next_example()? else {
                return Ok(None);
            };
            ids.push(ex.ids);
            src_mask.push(ex.src_mask);
        }
        Ok(Some(Batch {
            ids,
            src_mask,
            epoch: self.state.epoch,
        }))
    }

    /// The next example, or `None` if a whole pass over the source yields none.
    fn next_example(&mut self) -> Result<Option<Example>> {
        if self.state.pos_in_window >= self.window.len() {
            self.state.window_start += self.window.len() as u64;
            self.fill_window()?;
            if self.window.is_empty() {
                // End of the epoch: start the next one from the top of the source.
                self.state.epoch += 1;
                self.state.window_start = 0;
                self.source.rewind()?;
                self.fill_window()?;
                if self.window.is_empty() {
                    return Ok(None);
                }
            }
        }
        let ex = self.window[self.state.pos_in_window].clone();
        self.state.pos_in_window += 1;
        self.state.examples_seen += 1;
        Ok(Some(ex))
    }

    /// Reads the window starting at `window_start` and permutes it; resets the position.
    fn fill_window(&mut self) -> Result<()> {
        self.window.clear();
        while self.window.len() < self.state.config.shuffle_buffer {
            match self.source.next_example()? {
                Some(ex) => self.window.push(ex),
                None => break,
            }
        }
        let c = &self.state.config;
        let mut rng = Rng::seed(
            c.seed
                ^ self.state.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ self.state.window_start.wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        // Fisher-Yates.
        for i in (1..self.window.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            self.window.swap(i, j);
        }
        self.state.pos_in_window = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten one-token examples 0..10, so batches show the order directly.
    fn source() -> VecSource {
        VecSource::from_blocks((0..10).map(|i| vec![i]).collect())
    }

    fn config(batch_size: usize, shuffle_buffer: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            shuffle_buffer,
            seed: 42,
        }
    }

    fn flat(b: &Batch) -> Vec<u32> {
        b.ids.iter().map(|r| r[0]).collect()
    }

    #[test]
    fn unshuffled_order_runs_across_epochs() {
        let mut l = Loader::new(source(), config(4, 1)).unwrap();
        assert_eq!(flat(&l.next_batch().unwrap()), vec![0, 1, 2, 3]);
        assert_eq!(flat(&l.next_batch().unwrap()), vec![4, 5, 6, 7]);
        let b = l.next_batch().unwrap();
        assert_eq!(flat(&b), vec![8, 9, 0, 1]);
        assert_eq!(b.epoch, 1);
        assert_eq!(b.src_mask, vec![vec![0]; 4]);
    }

    #[test]
    fn shuffle_permutes_within_windows_and_differs_per_epoch() {
        let mut l = Loader::new(source(), config(10, 4)).unwrap();
        let e0 = flat(&l.next_batch().unwrap());
        let e1 = flat(&l.next_batch().unwrap());
        for e in [&e0, &e1] {
            // Windows [0..4), [4..8), [8..10) stay in place, permuted inside.
            let mut w: Vec<Vec<u32>> = e.chunks(4).map(|c| c.to_vec()).collect();
            w.iter_mut().for_each(|c| c.sort());
            assert_eq!(w, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        }
        assert_ne!(e0, e1);
        assert_ne!(e0, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn resume_from_any_step_matches_a_straight_run() {
        for (batch, buffer) in [(3, 4), (4, 100), (1, 1)] {
            let mut straight = Loader::new(source(), config(batch, buffer)).unwrap();
            let expected: Vec<Batch> = (0..12).map(|_| straight.next_batch().unwrap()).collect();
            for cut in 0..12 {
                let mut first = Loader::new(source(), config(batch, buffer)).unwrap();
                let mut got: Vec<Batch> = (0..cut).map(|_| first.next_batch().unwrap()).collect();
                let json = serde_json::to_string(first.state()).unwrap();
                let state: LoaderState = serde_json::from_str(&json).unwrap();
                let mut resumed = Loader::from_state(source(), state).unwrap();
                got.extend((cut..12).map(|_| resumed.next_batch().unwrap()));
                assert_eq!(got, expected, "batch {batch}, buffer {buffer}, cut {cut}");
            }
        }
    }

    #[test]
    fn bad_configs_and_empty_data_are_errors() {
        assert!(Loader::new(source(), config(0, 1)).is_err());
        assert!(Loader::new(source(), config(1, 0)).is_err());
        let mut empty = Loader::new(VecSource::new(vec![]), config(2, 2)).unwrap();
        assert!(empty.next_batch().is_err());
        assert_eq!(empty.try_next_batch().unwrap(), None);
        // A cursor past the end of the data (the corpus shrank) is refused, not wrapped.
        let mut l = Loader::new(source(), config(3, 4)).unwrap();
        l.next_batch().unwrap();
        l.next_batch().unwrap();
        let state = l.state().clone();
        let short = VecSource::from_blocks(vec![vec![0]; 3]);
        assert!(Loader::from_state(short, state).is_err());
    }
}
