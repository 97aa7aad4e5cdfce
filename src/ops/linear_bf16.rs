//! The bf16 linear layer on dlm's GEMM (gemm/mod.rs): f32 accumulation, bf16 tensors in and out.
//! candle's CPU matmul widens both bf16 operands to f32 copies on every call; here a weight is
//! packed in bf16 (once for a model being run, per call in training) and the activations are
//! widened a staged block at a time.
//!
//! Training: y = x·Wᵀ (+ b) as one autograd node, like linear_fused.rs for f32.
//!   forward   y = x·Wᵀ (HF [out, in]) or x·W (Conv1D [in, out]), plus b     saved: nothing
//!   backward  dx = dy·W(ᵀ),  dW = dyᵀ·x or xᵀ·dy (in W's own layout),  db = Σ_rows dy
//! each product in bf16 operands (`gemm::matmul_acc_bf16`) accumulated in f32, and each result
//! in its input's dtype. Mixed-precision training hands the op the f32 master weight itself
//! (`apply_mixed`): it is rounded to bf16 as it is packed, and dW comes back f32, straight onto
//! the variable (a bf16 cast node in the graph would make candle sum every matrix's gradient in
//! bf16 and then widen it: two passes over all the weights, a sixth of a GPT-2 step).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::cpu;
use super::gemm::{self, Data, MatRef};
use super::linear::{output_dims, WeightLayout};

/// The bf16 kernels serve a bf16 CPU weight, with x and the bias in bf16 or f32 (mixed-precision
/// training keeps activations and biases f32, as autocast does, and only the matrices bf16).
pub fn fusable(ts: &[&Tensor]) -> bool {
    let float = |t: &&Tensor| matches!(t.dtype(), DType::F32 | DType::BF16);
    ts.len() >= 2
        && ts.iter().all(|t| t.device().is_cpu() && float(t))
        && ts[1].dtype() == DType::BF16
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
fn weight_in_out(w: Data<'_>, layout: WeightLayout, d_in: usize, d_out: usize) -> MatRef<'_> {
    let (rs, cs) = match layout {
        WeightLayout::InOut => (d_out, 1),
        WeightLayout::OutIn => (1, d_in),
    };
    MatRef {
        data: w,
        rows: d_in,
        cols: d_out,
        rs,
        cs,
    }
}

/// Mixed precision: an f32 or bf16 CPU weight with x and the bias f32 or bf16, products in bf16.
pub fn fusable_mixed(ts: &[&Tensor]) -> bool {
    let float = |t: &&Tensor| matches!(t.dtype(), DType::F32 | DType::BF16);
    ts.len() >= 2 && ts.iter().all(|t| t.device().is_cpu() && float(t))
}

/// Applies the bf16 linear to (x, W) or (x, W, b) as one autograd node; W may be f32 (the
/// master weight of mixed-precision training), which is rounded to bf16 for the products.
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
        let (xd, xs) = (data(x)?, x.1.shape());
        let (wd, ws) = (data(w)?, w.1.shape());
        let bd = b.map(values_f32).transpose()?;
        let (d_in, d_out) = self.layout.in_out(ws)?;
        if xs.dims().last() != Some(&d_in) || bd.as_ref().is_some_and(|b| b.len() != d_out) {
            candle_core::bail!(
                "linear: input {xs:?}, weight {ws:?}, bias {:?}",
                bd.map(|b| b.len())
            );
        }
        let rows = xs.elem_count() / d_in.max(1);
        let mut y = match bd {
            Some(b) => b.repeat(rows),
            None => vec![0f32; rows * d_out],
        };
        gemm::matmul_acc_bf16(
            MatRef::row_major(xd, rows, d_in),
            weight_in_out(wd, self.layout, d_in, d_out),
            &mut y,
        );
        let shape = Shape::from(output_dims(xs.dims(), d_out));
        Ok(match xd {
            Data::F32(_) => (CpuStorage::F32(y), shape),
            Data::Bf16(_) => (CpuStorage::BF16(to_bf16(&y)), shape),
        })
    }

    /// (dx, dW, db) for inputs x, W and the bias if there is one, each in its input's dtype.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (d_in, d_out) = self.layout.in_out(w.shape())?;
        let rows = x.elem_count() / d_in.max(1);
        let dy = dy.to_dtype(x.dtype())?.contiguous()?;
        let mut dx = vec![0f32; rows * d_in];
        let mut dw = vec![0f32; d_in * d_out];
        with_matrix(x, rows, d_in, |x| {
            with_matrix(w, d_in * d_out, 1, |wd| {
                with_matrix(&dy, rows, d_out, |dy| {
                    // dx = dy·Wᵀ, with W read as [in, out] and transposed by strides.
                    let w_t = weight_in_out(wd.data, self.layout, d_in, d_out).t();
                    gemm::matmul_acc_bf16(dy, w_t, &mut dx);
                    // dW in W's stored layout: dyᵀ·x ([out, in]) or xᵀ·dy ([in, out]).
                    match self.layout {
                        WeightLayout::OutIn => gemm::matmul_acc_bf16(dy.t(), x, &mut dw),
                        WeightLayout::InOut => gemm::matmul_acc_bf16(x.t(), dy, &mut dw),
                    }
                    Ok(())
                })
            })
        })?;
        let dev = x.device();
        let dx = match x.dtype() {
            DType::BF16 => Tensor::from_vec(to_bf16(&dx), x.shape(), dev)?,
            _ => Tensor::from_vec(dx, x.shape(), dev)?,
        };
        let dw = match w.dtype() {
            DType::BF16 => Tensor::from_vec(to_bf16(&dw), w.shape(), dev)?,
            _ => Tensor::from_vec(dw, w.shape(), dev)?,
        };
        let db = match b {
            Some(b) => {
                let mut sums = vec![0f32; d_out];
                match dy.dtype() {
                    DType::BF16 => cpu::with_slice::<bf16, _>(&dy, |d| {
                        column_sums(d, d_out, &mut sums);
                        Ok(())
                    })?,
                    _ => cpu::with_slice::<f32, _>(&dy, |d| {
                        column_sums(d, d_out, &mut sums);
                        Ok(())
                    })?,
                }
                Some(Tensor::from_vec(sums, d_out, dev)?.to_dtype(b.dtype())?)
            }
            None => None,
        };
        Ok((dx, dw, db))
    }
}

/// An f32 or bf16 storage as the GEMM's operand data.
fn data(x: Input) -> Result<Data> {
    Ok(match x.0 {
        CpuStorage::BF16(_) => Data::Bf16(cpu::slice::<bf16>(x.0, x.1)?),
        _ => Data::F32(cpu::slice::<f32>(x.0, x.1)?),
    })
}

/// A bias (f32 or bf16) as f32 values.
fn values_f32(b: Input) -> Result<Vec<f32>> {
    Ok(match b.0 {
        CpuStorage::BF16(_) => cpu::slice::<bf16>(b.0, b.1)?
            .iter()
            .map(|v| v.to_f32())
            .collect(),
        _ => cpu::slice::<f32>(b.0, b.1)?.to_vec(),
    })
}

/// out[j] = Σ_rows m[row, j] in f32, m row-major `width` wide.
fn column_sums<T: Copy + Into<f32> + Sync>(m: &[T], width: usize, out: &mut [f32]) {
    let rows = m.len() / width.max(1);
    let chunk = cpu::rows_per_task(rows, width);
    let sums = m
        .par_chunks(chunk * width.max(1))
        .map(|block| {
            let mut s = vec![0f32; width];
            for row in block.chunks(width.max(1)) {
                for (s, v) in s.iter_mut().zip(row) {
                    *s += (*v).into();
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
        let (dx, dw, _) = self.backward(x, w, None, dy)?;
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
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, Some(b), dy)?;
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
    /// (≤ k·2⁻²⁴·Σ|terms|) plus, for a bf16 result, its one rounding (≤ 2⁻⁸·|result|: bf16
    /// keeps 8 significant bits, so its unit roundoff is 2⁻⁸). An f32 result is held to the same
    /// bound, which it meets with room.
    fn assert_close(what: &str, got: &Tensor, (want, scale): (Vec<f64>, Vec<f64>), k: usize) {
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
                // All bf16, and mixed precision's f32 x, bias and dy around the bf16 weight
                // (the same values widened, exactly): each result in its operand's dtype.
                for mixed in [false, true] {
                    let f32_if = |t: &Tensor| match mixed {
                        true => t.to_dtype(DType::F32).unwrap(),
                        false => t.clone(),
                    };
                    let (x, bias, dy) = (f32_if(&x), f32_if(&bias), f32_if(&dy));
                    let what = |p: &str| format!("{} (mixed: {mixed})", what(p));
                    let mut ts = vec![&x, &w];
                    ts.extend(with_bias.then_some(&bias));
                    let y = apply(layout, &ts).unwrap();
                    assert_eq!(y.dtype(), x.dtype());
                    assert_close(&what("training forward"), &y, y_ref(), d_in);
                    let lin = Linear::new(w.clone(), with_bias.then(|| bias.clone()), layout);
                    let y = lin.forward(&x).unwrap();
                    assert_close(&what("inference forward"), &y, y_ref(), d_in);
                    // The composed reference (what a GPU runs) takes the mixed form too, its
                    // product rounded to bf16 once before the bias: within 2⁻⁸ of the largest
                    // |product| + |bias| of the fused result.
                    if mixed {
                        let c = lin.forward_composed(&x).unwrap();
                        assert_eq!(c.dtype(), DType::F32);
                        let (c, y) = (values(&c), values(&y));
                        let (worst, size) =
                            c.iter().zip(&y).fold((0f64, 0f64), |(w, s), (c, y)| {
                                (w.max((c - y).abs()), s.max(y.abs()))
                            });
                        let bias_size = bv.iter().fold(0f64, |m, b| m.max(b.abs()));
                        let bound = (size + bias_size) / 256.0;
                        assert!(worst <= bound, "{}: {worst} > {bound}", what("composed"));
                    }

                    let op = FusedLinearBf16 { layout };
                    let (dx, dw, db) = op
                        .backward(&x, &w, with_bias.then_some(&bias), &dy)
                        .unwrap();
                    assert_eq!((dx.dtype(), dw.dtype()), (x.dtype(), DType::BF16));
                    assert!(db.as_ref().is_none_or(|db| db.dtype() == bias.dtype()));
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
}
