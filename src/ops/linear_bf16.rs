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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Linear;
    use candle_core::Device;

    /// The f64 product c[m×n] = Σ_q a(i, q)·b(q, j) (+ c0(j)) and Σ|terms| per element.
    fn reference(
        (m, k, n): (usize, usize, usize),
        a: impl Fn(usize, usize) -> f64,
        b: impl Fn(usize, usize) -> f64,
        c0: impl Fn(usize) -> f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut c, mut scale) = (vec![0f64; m * n], vec![0f64; m * n]);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut t) = (c0(j), c0(j).abs());
                for q in 0..k {
                    let p = a(i, q) * b(q, j);
                    s += p;
                    t += p.abs();
                }
                (c[i * n + j], scale[i * n + j]) = (s, t);
            }
        }
        (c, scale)
    }

    /// bf16 inputs reach the kernel exactly, so the error is f32 accumulation over k terms
    /// (≤ k·2⁻²⁴·Σ|terms|) plus the one rounding of the result to bf16 (≤ 2⁻⁸·|result|: bf16
    /// keeps 8 significant bits, so its unit roundoff is 2⁻⁸).
    fn assert_close(what: &str, got: &Tensor, (want, scale): (Vec<f64>, Vec<f64>), k: usize) {
        assert_eq!(got.dtype(), DType::BF16, "{what}");
        let got: Vec<f32> = got
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .unwrap();
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, ((&g, w), s)) in got.iter().zip(&want).zip(&scale).enumerate() {
            let bound = 2f64.powi(-8) * w.abs() * 1.01 + 1.01 * k as f64 * 2f64.powi(-24) * s;
            assert!(
                (g as f64 - w).abs() <= bound + 1e-30,
                "{what} [{i}]: {g} vs {w} (bound {bound:.2e})"
            );
        }
    }

    fn random(shape: &[usize], dev: &Device) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, dev)
            .and_then(|t| t.to_dtype(DType::BF16))
            .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        let v: Vec<f32> = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .unwrap();
        v.into_iter().map(f64::from).collect()
    }

    /// The training op's forward and its three gradient products, and the inference (packed)
    /// forward, against f64 over the same bf16 values: both layouts, with and without a bias,
    /// shapes off every tile (M = 1, 17, 3; K below and above a k-block).
    #[test]
    fn bf16_linear_matches_f64() {
        let dev = Device::Cpu;
        for (layout, with_bias) in [
            (WeightLayout::OutIn, false),
            (WeightLayout::OutIn, true),
            (WeightLayout::InOut, false),
            (WeightLayout::InOut, true),
        ] {
            for (rows, d_in, d_out) in [(1, 7, 5), (17, 300, 33), (3, 45, 260)] {
                let what =
                    |p: &str| format!("{p} {layout:?} bias {with_bias} {rows}×{d_in}→{d_out}");
                let (a, b) = layout.shape(d_in, d_out);
                let (x, w, bias, dy) = (
                    random(&[rows, d_in], &dev),
                    random(&[a, b], &dev),
                    random(&[d_out], &dev),
                    random(&[rows, d_out], &dev),
                );
                let (xv, wv, bv, dyv) = (values(&x), values(&w), values(&bias), values(&dy));
                // W(i, o) as the [in, out] matrix, from its stored layout.
                let wio = |i: usize, o: usize| match layout {
                    WeightLayout::OutIn => wv[o * d_in + i],
                    WeightLayout::InOut => wv[i * d_out + o],
                };
                let b0 = |o: usize| if with_bias { bv[o] } else { 0.0 };
                let y_ref = || reference((rows, d_in, d_out), |r, i| xv[r * d_in + i], wio, b0);
                let mut ts = vec![&x, &w];
                ts.extend(with_bias.then_some(&bias));
                let y = apply(layout, &ts).unwrap();
                assert_close(&what("training forward"), &y, y_ref(), d_in);
                let lin = Linear::new(w.clone(), with_bias.then(|| bias.clone()), layout);
                let y = lin.forward(&x).unwrap();
                assert_close(&what("inference forward"), &y, y_ref(), d_in);

                let op = FusedLinearBf16 { layout };
                let (dx, dw, db) = op.backward(&x, &w, with_bias, &dy).unwrap();
                let dx_ref = reference(
                    (rows, d_out, d_in),
                    |r, o| dyv[r * d_out + o],
                    |o, i| wio(i, o),
                    |_| 0.0,
                );
                assert_close(&what("dx"), &dx, dx_ref, d_out);
                let dw_ref = match layout {
                    WeightLayout::OutIn => reference(
                        (d_out, rows, d_in),
                        |o, r| dyv[r * d_out + o],
                        |r, i| xv[r * d_in + i],
                        |_| 0.0,
                    ),
                    WeightLayout::InOut => reference(
                        (d_in, rows, d_out),
                        |i, r| xv[r * d_in + i],
                        |r, o| dyv[r * d_out + o],
                        |_| 0.0,
                    ),
                };
                assert_close(&what("dW"), &dw, dw_ref, rows);
                assert_eq!(db.is_some(), with_bias);
                if let Some(db) = db {
                    let db_ref = reference(
                        (1, rows, d_out),
                        |_, _| 1.0,
                        |r, o| dyv[r * d_out + o],
                        |_| 0.0,
                    );
                    assert_close(&what("db"), &db, db_ref, rows);
                }
            }
        }
    }
}
