//! Test support: a fused kernel against its composed reference, in value and in the gradient of
//! every input. The gradients flow from a random upstream gradient, so that no sum over the output
//! (Σ softmax = 1, say) makes them trivially equal.

use candle_core::{Device, Result, Tensor, Var};

/// Max |a − b| over all elements.
pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// How far fused and composed may differ.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    value: f32,
    grad: f32,
    /// Gradients relative to the largest composed one (at least 1): a norm's gradients grow as
    /// 1/σ of its input.
    grad_relative: bool,
}

impl Tolerance {
    /// Values within `value`, gradients within `grad`.
    pub const fn new(value: f32, grad: f32) -> Self {
        Self {
            value,
            grad,
            grad_relative: false,
        }
    }

    /// The gradient tolerance scaled by the largest composed gradient (when that exceeds 1).
    pub const fn relative_grads(self) -> Self {
        Self {
            grad_relative: true,
            ..self
        }
    }
}

/// Asserts that `fused` and `composed`, both computed from `vars`, agree in value and in the
/// gradient of each variable. `what` names the case in a failure.
pub fn assert_fused_matches(
    what: &str,
    vars: &[&Var],
    fused: &Tensor,
    composed: &Tensor,
    tol: Tolerance,
) -> Result<()> {
    let d = max_diff(fused, composed)?;
    assert!(d < tol.value, "{what}: values differ by {d}");
    let up = Tensor::randn(0f32, 1.0, fused.shape(), &Device::Cpu)?;
    let gf = (fused * &up)?.sum_all()?.backward()?;
    let gc = (composed * &up)?.sum_all()?.backward()?;
    for (i, v) in vars.iter().enumerate() {
        let (a, b) = (gf.get(v).expect("fused grad"), gc.get(v).expect("grad"));
        let scale = match tol.grad_relative {
            true => b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0),
            false => 1.0,
        };
        let d = max_diff(a, b)?;
        assert!(
            d < tol.grad * scale,
            "{what}, input {i}: gradient differs by {d}"
        );
    }
    Ok(())
}
