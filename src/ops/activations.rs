//! Activations. The composed references are candle's unary `gelu` (tanh approximation) and
//! `silu`, whose backward rules build about ten full-size tensors each. On f32 CPU tensors one
//! elementwise custom op computes the value, and its backward recomputes the derivative from the
//! saved input in one pass:
//!
//!   gelu_new  y = ½x(1 + tanh u), u = c(x + 0.044715x³), c = √(2/π)
//!             y' = ½(1 + tanh u) + ½x(1 − tanh²u)·c(1 + 3·0.044715x²)
//!   silu      y = x·σ(x),  y' = σ(x)(1 + x(1 − σ(x)))
//!   swiglu    y = silu(g)·u,  dg = dy·u·silu'(g),  du = dy·silu(g)   (LLaMA's MLP, one pass)

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;
use super::custom::{self, Inputs, Kernel};

/// GPT-2's `gelu_new`: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), which is candle's `gelu`.
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    if cpu::fusable(&[x]) {
        return custom::apply(Fused::GeluNew, &[x]);
    }
    x.gelu()
}

/// LLaMA's SiLU, x·σ(x).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if cpu::fusable(&[x]) {
        return custom::apply(Fused::Silu, &[x]);
    }
    x.silu()
}

/// LLaMA's gated MLP activation silu(gate)·up, elementwise over two same-shape tensors.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if cpu::fusable(&[gate, up]) && gate.shape() == up.shape() {
        return custom::apply(SwiGlu, &[gate, up]);
    }
    silu(gate)? * up
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_K: f32 = 0.044_715;

/// tanh u = 1 − 2/(e^{2u} + 1): saturates to ±1 correctly, and vectorises with `cpu::exp`.
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (cpu::exp(2.0 * u) + 1.0)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + cpu::exp(-x))
}

#[derive(Clone, Copy)]
enum Fused {
    GeluNew,
    Silu,
}

impl Fused {
    /// y = f(x) over a chunk.
    #[inline(always)]
    fn value(self, x: &[f32], y: &mut [f32]) {
        match self {
            Fused::GeluNew => {
                for (y, &x) in y.iter_mut().zip(x) {
                    let t = tanh(SQRT_2_OVER_PI * (x + GELU_K * x * x * x));
                    *y = 0.5 * x * (1.0 + t);
                }
            }
            Fused::Silu => {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * sigmoid(x);
                }
            }
        }
    }

    /// dx = dy·f'(x) over a chunk.
    #[inline(always)]
    fn grad(self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        match self {
            Fused::GeluNew => {
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    let t = tanh(SQRT_2_OVER_PI * (x + GELU_K * x * x * x));
                    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_K * x * x);
                    *dx = dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
                }
            }
            Fused::Silu => {
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    let s = sigmoid(x);
                    *dx = dy * s * (1.0 + x * (1.0 - s));
                }
            }
        }
    }
}

/// Elements per rayon task.
const CHUNK: usize = 1 << 15;

// The elementwise loops compiled for the vector units this CPU has (`cpu::simd`'s closure
// stayed out of line, in SSE code).
cpu::simd_fn! {
    fn value_on(f: Fused, x: &[f32], y: &mut [f32]) = Fused::value;
}
cpu::simd_fn! {
    fn grad_on(f: Fused, x: &[f32], dy: &[f32], dx: &mut [f32]) = Fused::grad;
}
cpu::simd_fn! {
    fn swiglu_on(g: &[f32], u: &[f32], y: &mut [f32]) = swiglu_values;
}
cpu::simd_fn! {
    fn swiglu_grad_on(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) =
        swiglu_grads;
}

/// y = silu(g)·u.
#[inline(always)]
fn swiglu_values(g: &[f32], u: &[f32], y: &mut [f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        *y = g * sigmoid(g) * u;
    }
}

/// dg and du of y = silu(g)·u from dy.
#[inline(always)]
fn swiglu_grads(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for k in 0..dg.len() {
        let s = sigmoid(g[k]);
        du[k] = dy[k] * g[k] * s;
        dg[k] = dy[k] * u[k] * s * (1.0 + g[k] * (1.0 - s));
    }
}

impl Kernel for Fused {
    fn name(&self, _arity: usize) -> &'static str {
        match self {
            Fused::GeluNew => "fused-gelu-new",
            Fused::Silu => "fused-silu",
        }
    }

    fn forward(&self, inputs: &Inputs) -> Result<(Vec<f32>, Shape)> {
        let x = inputs.f32(0)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| value_on(*self, x, y));
        Ok((y, inputs.shape(0)?.clone()))
    }

    fn backward(&self, inputs: &[&Tensor], _y: &Tensor, dy: &Tensor) -> Result<Vec<Vec<f32>>> {
        let x = inputs[0];
        let mut dx = vec![0f32; x.elem_count()];
        cpu::with_data(x, |xs| {
            cpu::with_data(dy, |dys| {
                dx.par_chunks_mut(CHUNK)
                    .zip(xs.par_chunks(CHUNK).zip(dys.par_chunks(CHUNK)))
                    .for_each(|(dx, (x, dy))| grad_on(*self, x, dy, dx));
                Ok(())
            })
        })?;
        Ok(vec![dx])
    }
}

struct SwiGlu;

impl Kernel for SwiGlu {
    fn name(&self, _arity: usize) -> &'static str {
        "fused-swiglu"
    }

    fn forward(&self, inputs: &Inputs) -> Result<(Vec<f32>, Shape)> {
        let (g, u) = (inputs.f32(0)?, inputs.f32(1)?);
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| swiglu_on(g, u, y));
        Ok((y, inputs.shape(0)?.clone()))
    }

    /// (dgate, dup).
    fn backward(&self, inputs: &[&Tensor], _y: &Tensor, dy: &Tensor) -> Result<Vec<Vec<f32>>> {
        let (gate, up) = (inputs[0], inputs[1]);
        let n = gate.elem_count();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        cpu::with_data(gate, |g| {
            cpu::with_data(up, |u| {
                cpu::with_data(dy, |dy| {
                    dg.par_chunks_mut(CHUNK)
                        .zip(du.par_chunks_mut(CHUNK))
                        .enumerate()
                        .for_each(|(c, (dg, du))| {
                            let at = c * CHUNK;
                            let (g, u, dy) = (&g[at..], &u[at..], &dy[at..]);
                            swiglu_grad_on(g, u, dy, dg, du)
                        });
                    Ok(())
                })
            })
        })?;
        Ok(vec![dg, du])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fused_check::{assert_fused_matches, Tolerance};
    use candle_core::{Device, Var};

    #[test]
    fn gelu_new_matches_formula() -> Result<()> {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let t = Tensor::new(&xs, &Device::Cpu)?;
        let got = gelu_new(&t)?.to_vec1::<f32>()?;
        for (x, g) in xs.iter().zip(got) {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            let want = 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh());
            assert!((g - want).abs() < 1e-6, "gelu_new({x}) = {g}, want {want}");
        }
        Ok(())
    }

    /// Fused value and gradient against candle's composed `gelu` / `silu`.
    #[test]
    fn fused_matches_composed() -> Result<()> {
        let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (5, 301), &Device::Cpu)?)?;
        type Op = fn(&Tensor) -> Result<Tensor>;
        let cases: [(&str, Op, Op); 2] = [
            ("gelu_new", gelu_new, |x| x.gelu()),
            ("silu", silu, |x| x.silu()),
        ];
        for (what, fused, composed) in cases {
            let (f, c) = (fused(&x)?, composed(&x)?);
            assert_fused_matches(what, &[&x], &f, &c, Tolerance::new(1e-5, 1e-5))?;
        }
        Ok(())
    }

    /// Fused silu(g)·u against the composed product: value and both gradients.
    #[test]
    fn fused_swiglu_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let g = Var::from_tensor(&Tensor::randn(0f32, 3.0, (3, 40_000), &dev)?)?;
        let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 40_000), &dev)?)?;
        let (f, c) = (swiglu(&g, &u)?, (g.silu()? * u.as_tensor())?);
        assert_fused_matches("swiglu", &[&g, &u], &f, &c, Tolerance::new(1e-5, 1e-4))
    }
}
