//! Which logits row scores which token: the one home of the shift (reference-semantics §1.3,
//! §2.1). The loss, the scorers and the samplers ask it instead of adding or subtracting one.
//!
//! * `Next`: logits at i predict token i+1, as in AR pre-training (DiffuGPT, DiffuLLaMA, Dream).
//!   Position 0 has no row: it is never a target, and at inference it keeps its input token
//!   while taking row 0's score (the reference shifts the scores as `cat(s[:, :1], s[:, :-1])`).
//! * `Same`: logits at i predict token i (LLaDA; the paper's "without shift" ablation).
//! * `Concat`: Dream's `cat(logits[:, :1], logits[:, :-1])`. It is `Next` except that position 0
//!   also takes row 0's token at inference, so it differs from `Next` only in `proposes`. In
//!   training it is `Next`: Dream never masks position 0, so that position is never a target.

use crate::model::Architecture;

/// How logits rows line up with token positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shift {
    /// Logits at i predict token i+1.
    Next,
    /// Logits at i predict token i.
    Same,
    /// `Next`, and row 0 also proposes position 0 (Dream's inference).
    Concat,
}

impl Shift {
    /// The shift a family fixes: LLaDA was trained without one (`Same`), Dream with one (`Next`,
    /// read at inference as `cat(logits[:, :1], logits[:, :-1])`). None for GPT-2 and LLaMA,
    /// whose run says (DiffuGPT and DiffuLLaMA: `Next`).
    pub fn for_arch(arch: Architecture) -> Option<Self> {
        match arch {
            Architecture::Llada => Some(Shift::Same),
            Architecture::Dream => Some(Shift::Next),
            Architecture::Gpt2 | Architecture::Llama => None,
        }
    }

    /// The shift sampling reads a model of `arch` with: the family's, where Dream's position 0
    /// also takes row 0's token (`Concat`); `Next` for GPT-2 and LLaMA (DiffuGPT, DiffuLLaMA).
    pub fn for_sampling(arch: Architecture) -> Self {
        match arch {
            Architecture::Dream => Shift::Concat,
            _ => Self::for_arch(arch).unwrap_or(Shift::Next),
        }
    }

    /// The boolean of run configs and requests (`"shift": true` is `Next`).
    pub fn from_flag(shift: bool) -> Self {
        match shift {
            true => Shift::Next,
            false => Shift::Same,
        }
    }

    /// The first position a row predicts: positions before it are never targets.
    pub fn first_target(self) -> usize {
        match self {
            Shift::Next | Shift::Concat => 1,
            Shift::Same => 0,
        }
    }

    /// The row whose logits predict token `j`; None where no row does (position 0 under `Next`).
    pub fn row_for(self, j: usize) -> Option<usize> {
        j.checked_sub(self.first_target())
    }

    /// The token position that row `row` predicts.
    pub fn target_of(self, row: usize) -> usize {
        row + self.first_target()
    }

    /// The (row, token) pairs of a sequence `x0` at the positions `scored` accepts, in position
    /// order; positions without a row are skipped.
    pub fn targets<'a>(
        self,
        x0: &'a [u32],
        mut scored: impl FnMut(usize) -> bool + 'a,
    ) -> impl Iterator<Item = (usize, u32)> + 'a {
        (self.first_target()..x0.len())
            .filter(move |&j| scored(j))
            .map(move |j| (j - self.first_target(), x0[j]))
    }

    /// At inference, the row whose proposal (token and score) position `j` takes. A position
    /// without a row of its own reads row 0 for its score and keeps its token (`proposes`).
    pub fn proposal_row(self, j: usize) -> usize {
        self.row_for(j).unwrap_or(0)
    }

    /// Whether position `j` takes its token from the model at inference (false: it keeps the
    /// input token, `Canvas::first`).
    pub fn proposes(self, j: usize) -> bool {
        self == Shift::Concat || self.row_for(j).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_targets_line_up() {
        let x0 = [10, 11, 12, 13];
        let next: Vec<_> = Shift::Next.targets(&x0, |j| j != 2).collect();
        assert_eq!(next, vec![(0, 11), (2, 13)]);
        let same: Vec<_> = Shift::Same.targets(&x0, |j| j != 2).collect();
        assert_eq!(same, vec![(0, 10), (1, 11), (3, 13)]);
        assert_eq!(
            (Shift::Next.row_for(0), Shift::Next.row_for(3)),
            (None, Some(2))
        );
        assert_eq!(
            (Shift::Next.proposal_row(0), Shift::Next.proposes(0)),
            (0, false)
        );
        assert_eq!(
            (Shift::Same.proposal_row(0), Shift::Same.proposes(0)),
            (0, true)
        );
        assert_eq!(Shift::Next.target_of(4), 5);
        // Dream: position 0 reads row 0 and takes its token; every other position as `Next`.
        assert_eq!(
            (Shift::Concat.proposal_row(0), Shift::Concat.proposes(0)),
            (0, true)
        );
        assert_eq!(Shift::Concat.proposal_row(5), 4);
        let concat: Vec<_> = Shift::Concat.targets(&x0, |j| j != 2).collect();
        assert_eq!(concat, next);
        use Architecture::*;
        let sampling = [Gpt2, Llama, Llada, Dream].map(Shift::for_sampling);
        assert_eq!(
            sampling,
            [Shift::Next, Shift::Next, Shift::Same, Shift::Concat]
        );
        assert_eq!(Shift::from_flag(false), Shift::Same);
    }
}
