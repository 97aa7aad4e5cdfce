//! Fused CPU linear layer: y = x·W (+ b) as one autograd node with an explicit backward pass.
//! The composed form (`Linear::forward_composed`) is reshape → matmul (→ transpose of W) →
//! broadcast_add → reshape, and autograd accumulates a full-size gradient for each of those
//! nodes; here the bias is the GEMM's initial value and the weight is read in its stored layout.
//!
//!   forward   y = x·Wᵀ (HF [out, in]) or x·W (Conv1D [in, out]), plus b     saved: nothing
//!   backward  dx = dy·W(ᵀ),  dW = dyᵀ·x or xᵀ·dy (in W's own layout),  db = Σ_rows dy

use candle_core::{Result, Shape, Tensor};

use super::cpu;
use super::custom::{Inputs, Kernel};
use super::linear::{output_dims, WeightLayout};

use cpu::Mat;

/// dst[m×n] = lhs[m×k]·rhs[k×n] (+ dst when `accumulate`), on all rayon threads.
fn matmul(
    dims: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: callers pass operands whose strides address only elements of their buffers, and
    // dst holds m·n elements at the given strides.
    unsafe {
        cpu::gemm_f32(
            dims,
            (dst.as_mut_ptr(), dst_rs, dst_cs),
            accumulate,
            lhs,
            rhs,
            par,
        )
    }
}

pub struct FusedLinear {
    pub layout: WeightLayout,
}

impl FusedLinear {
    /// The (row, column) strides that read W, or write dW, in place as the [in, out] matrix of
    /// y = x·W.
    fn in_out_strides(&self, d_in: usize, d_out: usize) -> (usize, usize) {
        match self.layout {
            WeightLayout::InOut => (d_out, 1),
            WeightLayout::OutIn => (1, d_in),
        }
    }
}

/// Without a bias: (x, W); with one: (x, W, b).
impl Kernel for FusedLinear {
    fn name(&self, arity: usize) -> &'static str {
        match arity {
            2 => "fused-linear",
            _ => "fused-linear-bias",
        }
    }

    fn forward(&self, inputs: &Inputs) -> Result<(Vec<f32>, Shape)> {
        let (x, xs) = (inputs.f32(0)?, inputs.shape(0)?);
        let (w, ws) = (inputs.f32(1)?, inputs.shape(1)?);
        let b = inputs.f32_if_any(2)?;
        let (d_in, d_out) = self.layout.in_out(ws)?;
        if xs.dims().last() != Some(&d_in) || b.is_some_and(|b| b.len() != d_out) {
            candle_core::bail!(
                "linear: input {xs:?}, weight {ws:?}, bias {:?}",
                b.map(|b| b.len())
            );
        }
        let rows = x.len() / d_in.max(1);
        let mut y = match b {
            Some(b) => b.repeat(rows),
            None => vec![0f32; rows * d_out],
        };
        let (w_rs, w_cs) = self.in_out_strides(d_in, d_out);
        matmul(
            (rows, d_out, d_in),
            &mut y,
            d_out,
            1,
            b.is_some(),
            (x.as_ptr(), d_in, 1),
            (w.as_ptr(), w_rs, w_cs),
        );
        Ok((y, Shape::from(output_dims(xs.dims(), d_out))))
    }

    /// (dx, dW) without a bias, (dx, dW, db) with one.
    fn backward(&self, inputs: &[&Tensor], _y: &Tensor, dy: &Tensor) -> Result<Vec<Vec<f32>>> {
        let (x, w) = (inputs[0], inputs[1]);
        let (d_in, d_out) = self.layout.in_out(w.shape())?;
        let rows = x.elem_count() / d_in.max(1);
        let mut dx = vec![0f32; rows * d_in];
        let mut dw = vec![0f32; d_in * d_out];
        let mut db = vec![0f32; d_out];
        cpu::with_data(x, |xs| {
            cpu::with_data(w, |ws| {
                cpu::with_data(dy, |dys| {
                    let dym = (dys.as_ptr(), d_out, 1);
                    let (w_rs, w_cs) = self.in_out_strides(d_in, d_out);
                    // dx = dy·Wᵀ, with W read as [in, out] and transposed by strides.
                    matmul(
                        (rows, d_in, d_out),
                        &mut dx,
                        d_in,
                        1,
                        false,
                        dym,
                        (ws.as_ptr(), w_cs, w_rs),
                    );
                    // dW[in, out] = xᵀ·dy, written straight into W's stored layout.
                    matmul(
                        (d_in, d_out, rows),
                        &mut dw,
                        w_rs,
                        w_cs,
                        false,
                        (xs.as_ptr(), 1, d_in),
                        dym,
                    );
                    // db = 1ᵀ·dy.
                    let ones = vec![1f32; rows];
                    matmul(
                        (1, d_out, rows),
                        &mut db,
                        d_out,
                        1,
                        false,
                        (ones.as_ptr(), rows, 1),
                        dym,
                    );
                    Ok(())
                })
            })
        })?;
        let mut grads = vec![dx, dw, db];
        grads.truncate(inputs.len());
        Ok(grads)
    }
}
