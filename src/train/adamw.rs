//! AdamW exactly as torch.optim.AdamW (decoupled weight decay applied to every parameter), with
//! global-norm gradient clipping folded into the same pass. On CPU one fused in-place kernel per
//! parameter reads the gradient once and updates parameter and moments together; elsewhere a
//! composed path does the same arithmetic. The moments are saved and restored with checkpoints.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// HF Trainer's defaults, which DiffuGPT used (reference-semantics §5).
    fn default() -> Self {
        Self {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments of one parameter, kept on the host for the fused CPU kernel.
#[derive(Debug, Clone, Default)]
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken so far (bias correction uses step + 1 for the next one).
    pub step: u64,
    moments: BTreeMap<String, Moments>,
}

/// Global L2 norm over all gradients, accumulated in f64.
pub fn global_grad_norm(grads: &[(String, Tensor)]) -> Result<f64> {
    let mut sum = 0.0f64;
    add_grad_squares(&mut sum, grads)?;
    Ok(sum.sqrt())
}

/// Adds each gradient's sum of squares to `sum`, one tensor at a time: the running sum of
/// `global_grad_norm`, for callers that receive the gradients in parts.
pub fn add_grad_squares(sum: &mut f64, grads: &[(String, Tensor)]) -> Result<()> {
    for (_, g) in grads {
        *sum += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    Ok(())
}

/// torch's clip_grad_norm_ factor: min(1, max_norm / (norm + 1e-6)).
pub fn clip_coefficient(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) => (max / (norm + 1e-6)).min(1.0),
        None => 1.0,
    }
}

/// The scalars of one AdamW step, in f32 as the update runs: p ← p(1 − lr·wd); m, v ← moments of
/// g·scale; p ← p − (lr / bc1)·m / (√v / √bc2 + eps). Shared by the fused kernel and by ZeRO-1,
/// which applies it to its slice of the flattened parameters.
#[derive(Debug, Clone, Copy)]
pub struct StepScalars {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    scale: f32,
}

impl StepScalars {
    /// The scalars of step number `step` (1-based) at learning rate `lr`, gradients multiplied
    /// by `scale` (the clipping coefficient).
    pub fn new(c: AdamWConfig, step: u64, lr: f64, scale: f64) -> Self {
        let bc1 = 1.0 - c.beta1.powi(step as i32);
        let bc2 = 1.0 - c.beta2.powi(step as i32);
        Self {
            lr: lr as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            decay: c.weight_decay as f32,
            step_size: (lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            scale: scale as f32,
        }
    }

    /// Updates parameters `p` and moments `m`, `v` in place from gradients `g` (equal lengths).
    pub fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let (b1, b2) = (self.beta1, self.beta2);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * self.scale;
            *p *= 1.0 - self.lr * self.decay;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= self.step_size * *m / (v.sqrt() / self.bc2_sqrt + self.eps);
        }
    }
}

/// One parameter's update, fused into a single in-place pass over parameter and gradient.
struct FusedStep<'a> {
    moments: Mutex<&'a mut Moments>,
    scalars: StepScalars,
}

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "adamw-fused"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("adamw-fused: parameters and gradients must be f32");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adamw-fused: non-contiguous parameter or gradient");
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut guard = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adamw state poisoned".into()))?;
        let mo = &mut **guard;
        if mo.m.len() != p.len() {
            mo.m = vec![0.0; p.len()];
            mo.v = vec![0.0; p.len()];
        }
        self.scalars.apply(p, g, &mut mo.m, &mut mo.v);
        Ok(())
    }
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Applies one update at learning rate `lr` with gradients pre-multiplied by `scale` (the
    /// clipping coefficient).
    pub fn step(
        &mut self,
        vars: &BTreeMap<String, Var>,
        grads: &[(String, Tensor)],
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        self.begin_step();
        self.update(vars, grads, lr, scale)
    }

    /// Counts a new step; its updates follow with `update`, in one call or in parts.
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Updates the parameters of `grads` (some or all of them) as part of the current step.
    pub fn update(
        &mut self,
        vars: &BTreeMap<String, Var>,
        grads: &[(String, Tensor)],
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (name, g) in grads {
            let var = vars
                .get(name)
                .ok_or_else(|| Error::Input(format!("gradient for unknown parameter `{name}`")))?;
            let moments = self.moments.entry(name.clone()).or_default();
            let g = g.contiguous()?;
            if matches!(var.device(), Device::Cpu) && var.dtype() == DType::F32 {
                let op = FusedStep {
                    moments: Mutex::new(moments),
                    scalars: StepScalars::new(c, self.step, lr, scale),
                };
                var.as_tensor().inplace_op2(&g, &op)?;
            } else {
                composed_step(var, &g, moments, c, lr, scale, bc1, bc2)?;
            }
        }
        Ok(())
    }

    /// The first and second moments of one parameter, flattened; None before its first step.
    pub fn moments(&self, name: &str) -> Option<(&[f32], &[f32])> {
        let mo = self.moments.get(name).filter(|mo| !mo.m.is_empty())?;
        Some((&mo.m, &mo.v))
    }

    /// Replaces the moments of one parameter (flattened, as `moments` returns them).
    pub fn set_moments(&mut self, name: &str, m: Vec<f32>, v: Vec<f32>) {
        self.moments.insert(name.to_string(), Moments { m, v });
    }

    /// Moments as tensors named `m.<param>` / `v.<param>`, for checkpoints.
    pub fn state_tensors(&self, vars: &BTreeMap<String, Var>) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, mo) in &self.moments {
            let shape = vars.get(name).map(|v| v.shape().clone()).ok_or_else(|| {
                Error::Input(format!("optimizer state for unknown parameter `{name}`"))
            })?;
            for (prefix, data) in [("m", &mo.m), ("v", &mo.v)] {
                if data.is_empty() {
                    continue;
                }
                out.push((
                    format!("{prefix}.{name}"),
                    Tensor::from_slice(data, &shape, &Device::Cpu)?,
                ));
            }
        }
        Ok(out)
    }

    /// Restores moments saved by `state_tensors`.
    pub fn load_state_tensors(&mut self, step: u64, tensors: &[(String, Tensor)]) -> Result<()> {
        self.step = step;
        self.moments.clear();
        for (key, t) in tensors {
            let (prefix, name) = key
                .split_once('.')
                .ok_or_else(|| Error::Input(format!("bad optimizer state key `{key}`")))?;
            let data = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let mo = self.moments.entry(name.to_string()).or_default();
            match prefix {
                "m" => mo.m = data,
                "v" => mo.v = data,
                _ => return Err(Error::Input(format!("bad optimizer state key `{key}`"))),
            }
        }
        Ok(())
    }
}

/// The same update from candle ops, for devices without the fused kernel.
#[allow(clippy::too_many_arguments)]
fn composed_step(
    var: &Var,
    g: &Tensor,
    moments: &mut Moments,
    c: AdamWConfig,
    lr: f64,
    scale: f64,
    bc1: f64,
    bc2: f64,
) -> Result<()> {
    let dev = var.device();
    let shape = var.shape().clone();
    let load = |v: &Vec<f32>| -> candle_core::Result<Tensor> {
        if v.is_empty() {
            Tensor::zeros(&shape, DType::F32, dev)
        } else {
            Tensor::from_slice(v, &shape, &Device::Cpu)?.to_device(dev)
        }
    };
    let g = (g.to_dtype(DType::F32)? * scale)?;
    let m = ((load(&moments.m)? * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
    let v = ((load(&moments.v)? * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
    let p = (var.as_tensor().to_dtype(DType::F32)? * (1.0 - lr * c.weight_decay))?;
    let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
    let p = (p - ((&m / denom)? * (lr / bc1))?)?;
    var.set(&p.to_dtype(var.dtype())?)?;
    moments.m = m.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
    moments.v = v.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
    Ok(())
}
