//! `dlm score --request` in loss mode: a request carrying `x0` (with `t`, `mask_draws`,
//! `src_mask`) gets the diffusion training loss of Algorithm 1 and its gradients, so the loss
//! and every gradient can be checked from outside (against the PyTorch reference, say). The loss
//! is the one the model's family trains with (`loss_convention`: LLaDA's, Dream's, the paper's),
//! or the convention the request names.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::diffusion::loss::{LossConvention, LossTargets};
use crate::diffusion::noise::{kept_clean, mask_tokens};
use crate::diffusion::shift::Shift;
use crate::model::{ids_tensor, LoadedModel};
use crate::ops::{cross_entropy, AttentionMask};
use crate::train::adamw::global_grad_norm;
use crate::train::objective::loss_convention;
use crate::train::params::TrainableModel;
use crate::train::step::forward_loss;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossRequest {
    /// Clean sequences, [B][L].
    x0: Vec<Vec<u32>>,
    /// One time per sequence, in [1e-3, 1): the masking probability (LLaDA's and Dream's
    /// p_mask).
    t: Vec<f32>,
    /// One uniform draw per position: position i is masked where draw < t (and not src, nor
    /// position 0 where the loss convention keeps the first token).
    mask_draws: Vec<Vec<f32>>,
    /// 1 where a position is prompt (never masked); default all 0.
    src_mask: Option<Vec<Vec<u8>>>,
    /// Default: the model's recorded mask id.
    mask_id: Option<u32>,
    /// Default: the convention's shift (true for the paper's, which alone lets it change).
    shift: Option<bool>,
    /// The loss convention (masked-targets, llada, dream). Default: the model family's.
    loss: Option<String>,
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
    let convention = match &req.loss {
        Some(name) => name.parse::<LossConvention>()?,
        None => loss_convention(model.config.arch),
    };
    let shift = convention
        .shift(req.shift.map(Shift::from_flag))
        .map_err(|why| anyhow::anyhow!("shift: {why}"))?;
    let attention = match req.attention.as_deref().unwrap_or("bidirectional") {
        "bidirectional" => AttentionMask::Bidirectional,
        "causal" => AttentionMask::Causal,
        other => bail!("loss requests take causal or bidirectional attention, not `{other}`"),
    };
    let clean: Vec<Vec<bool>> = src
        .iter()
        .map(|s| kept_clean(s, convention.keeps_first()))
        .collect();
    let x_t: Vec<Vec<u32>> = (0..b)
        .map(|i| mask_tokens(&req.x0[i], &req.mask_draws[i], req.t[i], &clean[i], mask_id).x_t)
        .collect();
    let maskable: Vec<usize> = clean
        .iter()
        .map(|c| c.iter().filter(|&&k| !k).count())
        .collect();
    let targets = LossTargets::diffusion(&req.x0, &x_t, &req.t, mask_id, shift)
        .normalise(convention.normaliser(), &maskable);
    let trainable = TrainableModel::new(&model.config, &model.weights, device)?;
    let loss = forward_loss(trainable.model.as_ref(), &x_t, &attention, &targets, device)?;
    let grads = trainable.gradients(&loss.weighted.backward()?)?;
    let full = full_flag || req.full.unwrap_or(false);
    let ce = match full {
        true => Some(position_ce(
            model, &req.x0, &x_t, &attention, shift, device,
        )?),
        false => None,
    };
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
        "shift": shift == Shift::Next,
        "loss_convention": convention.to_string(),
        "loss_weighted": loss.weighted.to_scalar::<f32>()?,
        "loss_unweighted": loss.unweighted,
        "n_masked_targets": loss.n_targets,
        "normaliser": loss.normaliser,
        "ce": ce,
        "grad_norm": global_grad_norm(&grads)?,
        "grad_norms": norms,
        "grads": if full { Some(values) } else { None },
    }))
}

/// The cross-entropy of every token of `x0` [B][L], scored by the row that proposes it under
/// `shift` (its inference alignment: under `Next`, position 0 takes row 0, as Dream's
/// `cat(logits[:, :1], logits[:, :-1])`), before any masking.
fn position_ce(
    model: &LoadedModel,
    x0: &[Vec<u32>],
    x_t: &[Vec<u32>],
    attention: &AttentionMask,
    shift: Shift,
    device: &Device,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let l = x0[0].len();
    let rows: Vec<u32> = (0..x0.len() * l)
        .map(|r| ((r / l) * l + shift.proposal_row(r % l)) as u32)
        .collect();
    let rows = candle_core::Tensor::new(rows.as_slice(), device)?;
    let logits = model
        .model
        .logits_rows(&ids_tensor(x_t, device)?, attention, &rows)?;
    let targets: Vec<u32> = x0.concat();
    let ce = cross_entropy(
        &logits,
        &candle_core::Tensor::new(targets.as_slice(), device)?,
    )?;
    let ce = ce.to_dtype(DType::F32)?.reshape((x0.len(), l))?;
    Ok(ce.to_vec2()?)
}
