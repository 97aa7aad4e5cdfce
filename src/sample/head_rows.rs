//! Which rows of a denoising step go through the LM head. The exact path (`HeadRows::All`) runs
//! the head on every row, as the reference does; `HeadRows::Needed` runs it only on the rows whose
//! proposal can matter, which is the same output for a fraction of the work.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::LanguageModel;
use crate::ops::Greedy;

/// Which rows go through the LM head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRows {
    /// Every row, every step, T forwards: the reference's work.
    All,
    /// Only rows that feed an undecided position (or, for top-k confidence, a position that
    /// competes in its ranking); finished canvases leave the batch.
    Needed,
}

impl HeadRows {
    /// `All` when the user asks for the reference's exact work (`--exact`, `exact`).
    pub fn exact_if(exact: bool) -> Self {
        if exact {
            HeadRows::All
        } else {
            HeadRows::Needed
        }
    }
}

/// A position proposed this step and the logits row it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProposalRow {
    /// The canvas, as its index among the step's running canvases.
    pub canvas: usize,
    /// The position in that canvas.
    pub position: usize,
    /// The row of the step's flattened hidden states [B·W, D].
    pub row: usize,
}

/// The head's output on the rows a step needs.
pub struct HeadOutput {
    pub values: HeadValues,
    /// The flat rows that went through the head, sorted; None: every row, in order.
    rows: Option<Vec<u32>>,
}

pub enum HeadValues {
    /// [R, V], f32.
    Logits(Tensor),
    /// Each row's greedy choice.
    Greedy(Vec<Greedy>),
}

impl HeadOutput {
    /// Where flat row `row` is in the output; an error if it did not go through the head.
    pub fn index(&self, row: usize) -> Result<usize> {
        match &self.rows {
            Some(rows) => rows.binary_search(&(row as u32)).map_err(|_| {
                Error::Internal(format!("logits row {row} was not put through the LM head"))
            }),
            None => Ok(row),
        }
    }

    /// The logits of `self` and `other` (the same rows of two passes) combined by `f`, as
    /// classifier-free guidance does; an error for greedy outputs, which hold no logits.
    pub fn combine(
        self,
        other: &HeadOutput,
        f: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<HeadOutput> {
        match (&self.values, &other.values) {
            (HeadValues::Logits(a), HeadValues::Logits(b)) if self.rows == other.rows => {
                Ok(HeadOutput {
                    values: HeadValues::Logits(f(a, b)?),
                    rows: self.rows,
                })
            }
            _ => Err(Error::Internal(
                "combining head outputs needs the logits of the same rows".into(),
            )),
        }
    }

    /// Rows that went through the head.
    pub fn row_count(&self) -> Result<usize> {
        Ok(match &self.values {
            HeadValues::Logits(t) => t.dim(0)?,
            HeadValues::Greedy(g) => g.len(),
        })
    }
}

/// Runs the head on the rows `wanted` reads (every row of `hidden` [B, W, D] under
/// `HeadRows::All`): their logits, or with `greedy` only each row's greedy choice.
pub fn head_rows(
    model: &dyn LanguageModel,
    hidden: &Tensor,
    wanted: &[ProposalRow],
    mode: HeadRows,
    greedy: bool,
) -> Result<HeadOutput> {
    let (b, w, d) = hidden.dims3()?;
    let flat = hidden.reshape((b * w, d))?; // [B·W, D]
    let (input, rows) = match mode {
        // The reference's work: the head on every row [B·W], whichever rows are used.
        HeadRows::All => (flat, None),
        HeadRows::Needed => {
            let mut rows: Vec<u32> = wanted.iter().map(|p| p.row as u32).collect();
            rows.sort_unstable();
            rows.dedup();
            let index = Tensor::new(rows.as_slice(), hidden.device())?;
            (flat.index_select(&index, 0)?, Some(rows))
        }
    };
    let values = if greedy {
        HeadValues::Greedy(model.head_greedy(&input)?)
    } else {
        HeadValues::Logits(model.head(&input)?.to_dtype(DType::F32)?)
    };
    Ok(HeadOutput { values, rows })
}
