//! Fused CPU linear layer: y = x·W (+ b) as one autograd node with an explicit backward pass.
//! The composed form (`Linear::forward_composed`) is reshape → matmul (→ transpose of W) →
//! broadcast_add → reshape, and autograd accumulates a full-size gradient for each of those
//! nodes; here the bias is the GEMM's initial value and the weight is read in its stored layout.
//!
//!   forward   y = x·Wᵀ (HF [out, in]) or x·W (Conv1D [in, out]), plus b     saved: nothing
//!   backward  dx = dy·W(ᵀ),  dW = dyᵀ·x or xᵀ·dy (in W's own layout),  db = Σ_rows dy

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu;
use super::linear::WeightLayout;

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

/// x's shape with the last dimension `d_out`.
fn output_shape(xs: &Shape, d_out: usize) -> Shape {
    let mut dims = xs.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = d_out;
    }
    Shape::from(dims)
}

pub struct FusedLinear {
    pub layout: WeightLayout,
}

impl FusedLinear {
    /// (in, out) of a weight of shape `w` in this layout.
    fn in_out(&self, w: &Shape) -> Result<(usize, usize)> {
        let (a, b) = w.dims2()?;
        Ok(match self.layout {
            WeightLayout::OutIn => (b, a),
            WeightLayout::InOut => (a, b),
        })
    }

    /// W as the [in, out] matrix of y = x·W, read in place.
    fn w_as_in_out(&self, w: &[f32], d_in: usize, d_out: usize) -> Mat {
        match self.layout {
            WeightLayout::InOut => (w.as_ptr(), d_out, 1),
            WeightLayout::OutIn => (w.as_ptr(), 1, d_in),
        }
    }

    fn forward(
        &self,
        x: &[f32],
        xs: &Shape,
        w: &[f32],
        ws: &Shape,
        b: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (d_in, d_out) = self.in_out(ws)?;
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
        let wm = self.w_as_in_out(w, d_in, d_out);
        matmul(
            (rows, d_out, d_in),
            &mut y,
            d_out,
            1,
            b.is_some(),
            (x.as_ptr(), d_in, 1),
            wm,
        );
        Ok((CpuStorage::F32(y), output_shape(xs, d_out)))
    }

    /// (dx, dW, db).
    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Vec<f32>)> {
        let (d_in, d_out) = self.in_out(w.shape())?;
        let rows = x.elem_count() / d_in.max(1);
        let mut dx = vec![0f32; rows * d_in];
        let mut dw = vec![0f32; d_in * d_out];
        let mut db = vec![0f32; d_out];
        cpu::with_data(x, |xs| {
            cpu::with_data(w, |ws| {
                cpu::with_data(dy, |dys| {
                    let dym = (dys.as_ptr(), d_out, 1);
                    // dx = dy·Wᵀ, with W read as [in, out] and transposed by strides.
                    let (wp, w_rs, w_cs) = self.w_as_in_out(ws, d_in, d_out);
                    matmul(
                        (rows, d_in, d_out),
                        &mut dx,
                        d_in,
                        1,
                        false,
                        dym,
                        (wp, w_cs, w_rs),
                    );
                    // dW[in, out] = xᵀ·dy, written straight into W's stored layout.
                    let (rs, cs) = match self.layout {
                        WeightLayout::InOut => (d_out, 1),
                        WeightLayout::OutIn => (1, d_in),
                    };
                    matmul(
                        (d_in, d_out, rows),
                        &mut dw,
                        rs,
                        cs,
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
        Ok((cpu::tensor_like(dx, x)?, cpu::tensor_like(dw, w)?, db))
    }
}

/// Without a bias: (x, W).
impl CustomOp2 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(
            cpu::slice(s1, l1)?,
            l1.shape(),
            cpu::slice(s2, l2)?,
            l2.shape(),
            None,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// With a bias: (x, W, b).
impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-linear-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = cpu::slice(s3, l3)?;
        self.forward(
            cpu::slice(s1, l1)?,
            l1.shape(),
            cpu::slice(s2, l2)?,
            l2.shape(),
            Some(b),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, dy)?;
        Ok((Some(dx), Some(dw), Some(cpu::tensor_like(db, b)?)))
    }
}
