//! The bf16 linear layer on dlm's GEMM (gemm/mod.rs): f32 accumulation, bf16 tensors in and out.
//! candle's CPU matmul widens both bf16 operands to f32 copies on every call; here a weight is
//! packed in bf16 (once for a model being run, per call in training) and the activations are
//! widened a staged block at a time.
//!
//! Training: y = x·Wᵀ (+ b) as one autograd node, like linear_fused.rs for f32.
//!   forward   y = x·Wᵀ (HF [out, in]) or x·W (Conv1D [in, out]), plus b     saved: nothing
//!   backward  dx = dy·W(ᵀ),  dW = dyᵀ·x or xᵀ·dy (in W's own layout),  db = Σ_rows dy
//! each product accumulated in f32 and rounded to bf16 once.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::cpu;
use super::gemm::{self, Data, MatRef};
use super::linear::{output_dims, WeightLayout};

/// The bf16 kernels serve bf16 CPU tensors.
pub fn fusable(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::BF16)
}

/// Runs `f` on t (f32 or bf16) as a row-major rows × cols matrix.
pub fn with_matrix<R>(
    t: &Tensor,
    rows: usize,
    cols: usize,
    f: impl FnOnce(MatRef) -> Result<R>,
) -> Result<R> {
    match t.dtype() {
        DType::BF16 => cpu::with_slice(t, |d| f(MatRef::row_major(Data::Bf16(d), rows, cols))),
        _ => cpu::with_slice(t, |d| f(MatRef::row_major(Data::F32(d), rows, cols))),
    }
}

/// The f32 values of a bias (any dtype).
pub fn bias_f32(b: &Tensor) -> Result<Vec<f32>> {
    b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// f32 → bf16 (round to nearest even), on all threads.
pub fn to_bf16(y: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; y.len()];
    out.par_chunks_mut(1 << 14)
        .zip(y.par_chunks(1 << 14))
        .for_each(|(o, y)| {
            for (o, &y) in o.iter_mut().zip(y) {
                *o = bf16::from_f32(y);
            }
        });
    out
}

/// W read in place as the [in, out] matrix of y = x·W.
fn weight_in_out(w: &[bf16], layout: WeightLayout, d_in: usize, d_out: usize) -> MatRef<'_> {
    let (rs, cs) = match layout {
        WeightLayout::InOut => (d_out, 1),
        WeightLayout::OutIn => (1, d_in),
    };
    MatRef {
        data: Data::Bf16(w),
        rows: d_in,
        cols: d_out,
        rs,
        cs,
    }
}

/// Applies the bf16 linear to (x, W) or (x, W, b) as one autograd node.
pub fn apply(layout: WeightLayout, ts: &[&Tensor]) -> Result<Tensor> {
    let op = FusedLinearBf16 { layout };
    match ts {
        [x, w] => x.contiguous()?.apply_op2(&w.contiguous()?, op),
        [x, w, b] => x
            .contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, op),
        _ => candle_core::bail!("linear: {} inputs", ts.len()),
    }
}

struct FusedLinearBf16 {
    layout: WeightLayout,
}

type Input<'a> = (&'a CpuStorage, &'a Layout);

impl FusedLinearBf16 {
    fn forward(&self, x: Input, w: Input, b: Option<Input>) -> Result<(CpuStorage, Shape)> {
        let (xd, xs) = (cpu::slice::<bf16>(x.0, x.1)?, x.1.shape());
        let (wd, ws) = (cpu::slice::<bf16>(w.0, w.1)?, w.1.shape());
        let bd = b.map(|(s, l)| cpu::slice::<bf16>(s, l)).transpose()?;
        let (d_in, d_out) = self.layout.in_out(ws)?;
        if xs.dims().last() != Some(&d_in) || bd.is_some_and(|b| b.len() != d_out) {
            candle_core::bail!(
                "linear: input {xs:?}, weight {ws:?}, bias {:?}",
                bd.map(|b| b.len())
            );
        }
        let rows = xd.len() / d_in.max(1);
        let mut y = match bd {
            Some(b) => b
                .iter()
                .map(|v| v.to_f32())
                .collect::<Vec<_>>()
                .repeat(rows),
            None => vec![0f32; rows * d_out],
        };
        gemm::matmul_acc(
            MatRef::row_major(Data::Bf16(xd), rows, d_in),
            weight_in_out(wd, self.layout, d_in, d_out),
            &mut y,
        );
        let shape = Shape::from(output_dims(xs.dims(), d_out));
        Ok((CpuStorage::BF16(to_bf16(&y)), shape))
    }

    /// (dx, dW, db) for inputs x, W and whether there is a bias.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        with_bias: bool,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (d_in, d_out) = self.layout.in_out(w.shape())?;
        let rows = x.elem_count() / d_in.max(1);
        let dy = dy.to_dtype(DType::BF16)?;
        let mut dx = vec![0f32; rows * d_in];
        let mut dw = vec![0f32; d_in * d_out];
        let mut db = vec![0f32; if with_bias { d_out } else { 0 }];
        cpu::with_slice::<bf16, _>(x, |xd| {
            cpu::with_slice::<bf16, _>(w, |wd| {
                cpu::with_slice::<bf16, _>(&dy, |dyd| {
                    let x = MatRef::row_major(Data::Bf16(xd), rows, d_in);
                    let dy = MatRef::row_major(Data::Bf16(dyd), rows, d_out);
                    // dx = dy·Wᵀ, with W read as [in, out] and transposed by strides.
                    let w_t = weight_in_out(wd, self.layout, d_in, d_out).t();
                    gemm::matmul_acc(dy, w_t, &mut dx);
                    // dW in W's stored layout: dyᵀ·x ([out, in]) or xᵀ·dy ([in, out]).
                    match self.layout {
                        WeightLayout::OutIn => gemm::matmul_acc(dy.t(), x, &mut dw),
                        WeightLayout::InOut => gemm::matmul_acc(x.t(), dy, &mut dw),
                    }
                    if with_bias {
                        column_sums(dyd, d_out, &mut db);
                    }
                    Ok(())
                })
            })
        })?;
        let dev = x.device();
        let dx = Tensor::from_vec(to_bf16(&dx), x.shape(), dev)?;
        let dw = Tensor::from_vec(to_bf16(&dw), w.shape(), dev)?;
        let db = with_bias
            .then(|| Tensor::from_vec(to_bf16(&db), d_out, dev))
            .transpose()?;
        Ok((dx, dw, db))
    }
}

/// out[j] = Σ_rows m[row, j] in f32, m row-major `width` wide.
fn column_sums(m: &[bf16], width: usize, out: &mut [f32]) {
    let rows = m.len() / width.max(1);
    let chunk = cpu::rows_per_task(rows, width);
    let sums = m
        .par_chunks(chunk * width.max(1))
        .map(|block| {
            let mut s = vec![0f32; width];
            for row in block.chunks(width.max(1)) {
                for (s, v) in s.iter_mut().zip(row) {
                    *s += v.to_f32();
                }
            }
            s
        })
        .collect::<Vec<_>>();
    for s in sums {
        for (o, v) in out.iter_mut().zip(s) {
            *o += v;
        }
    }
}

impl CustomOp2 for FusedLinearBf16 {
    fn name(&self) -> &'static str {
        "fused-linear-bf16"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, false, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for FusedLinearBf16 {
    fn name(&self) -> &'static str {
        "fused-linear-bias-bf16"
    }

    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, true, dy)?;
        Ok((Some(dx), Some(dw), db))
    }
}
