//! `dlm score --request` in loss mode: a request carrying `x0` (with `t`, `mask_draws`,
//! `src_mask`) gets the diffusion training loss of Algorithm 1 and its gradients, so the loss
//! and every gradient can be checked from outside (against the PyTorch reference, say).

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::diffusion::loss::LossTargets;
use crate::diffusion::noise::mask_tokens;
use crate::diffusion::shift::Shift;
use crate::model::LoadedModel;
use crate::ops::AttentionMask;
use crate::train::adamw::global_grad_norm;
use crate::train::params::TrainableModel;
use crate::train::step::forward_loss;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossRequest {
    /// Clean sequences, [B][L].
    x0: Vec<Vec<u32>>,
    /// One time per sequence, in [1e-3, 1).
    t: Vec<f32>,
    /// One uniform draw per position: position i is masked where draw < t (and not src).
    mask_draws: Vec<Vec<f32>>,
    /// 1 where a position is prompt (never masked); default all 0.
    src_mask: Option<Vec<Vec<u8>>>,
    /// Default: the model's recorded mask id.
    mask_id: Option<u32>,
    /// Default true.
    shift: Option<bool>,
    /// "bidirectional" (default) or "causal".
    attention: Option<String>,
    full: Option<bool>,
}

pub fn run(
    request: Value,
    model: &LoadedModel,
    device: &Device,
    full_flag: bool,
    source: &Path,
) -> anyhow::Result<Value> {
    let req: LossRequest = serde_json::from_value(request)
        .with_context(|| format!("{}: bad loss request", source.display()))?;
    let b = req.x0.len();
    let l = req.x0.first().map_or(0, |r| r.len());
    if b == 0 || l < 2 {
        bail!("x0 must hold at least one sequence of at least 2 tokens");
    }
    if req.x0.iter().any(|r| r.len() != l)
        || req.mask_draws.len() != b
        || req.mask_draws.iter().any(|r| r.len() != l)
        || req.t.len() != b
    {
        bail!("x0 [{b}][{l}], mask_draws [B][L] and t [B] must agree in shape");
    }
    let src = req.src_mask.unwrap_or_else(|| vec![vec![0; l]; b]);
    if src.len() != b || src.iter().any(|r| r.len() != l) {
        bail!("src_mask must be [{b}][{l}]");
    }
    let mask_id = req
        .mask_id
        .or(model.config.mask_token_id)
        .context("the model records no mask id; put mask_id in the request")?;
    let shift = req.shift.unwrap_or(true);
    let attention = match req.attention.as_deref().unwrap_or("bidirectional") {
        "bidirectional" => AttentionMask::Bidirectional,
        "causal" => AttentionMask::Causal,
        other => bail!("loss requests take causal or bidirectional attention, not `{other}`"),
    };
    let x_t: Vec<Vec<u32>> = (0..b)
        .map(|i| {
            let s: Vec<bool> = src[i].iter().map(|&v| v != 0).collect();
            mask_tokens(&req.x0[i], &req.mask_draws[i], req.t[i], &s, mask_id).x_t
        })
        .collect();
    let targets = LossTargets::diffusion(&req.x0, &x_t, &req.t, mask_id, Shift::from_flag(shift));
    let trainable = TrainableModel::new(&model.config, &model.weights, device)?;
    let loss = forward_loss(trainable.model.as_ref(), &x_t, &attention, &targets, device)?;
    let grads = trainable.gradients(&loss.weighted.backward()?)?;
    let full = full_flag || req.full.unwrap_or(false);
    let mut norms = Map::new();
    let mut values = Map::new();
    for (name, g) in &grads {
        let g = g.to_dtype(DType::F32)?;
        norms.insert(
            name.clone(),
            (g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64)
                .sqrt()
                .into(),
        );
        if full {
            values.insert(
                name.clone(),
                json!({"shape": g.dims(), "data": g.flatten_all()?.to_vec1::<f32>()?}),
            );
        }
    }
    Ok(json!({
        "x_t": x_t,
        "mask_id": mask_id,
        "shift": shift,
        "loss_weighted": loss.weighted.to_scalar::<f32>()?,
        "loss_unweighted": loss.unweighted,
        "n_masked_targets": loss.n_targets,
        "grad_norm": global_grad_norm(&grads)?,
        "grad_norms": norms,
        "grads": if full { Some(values) } else { None },
    }))
}
