//! Random initialisation for training from scratch (GPT-2 style): N(0, 0.02) for matrices and
//! embeddings, residual output projections scaled by 1/√(2·layers), zero biases, unit norms.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::error::{Error, Result};
use crate::model::{build, ModelConfig, Weights};
use crate::rng::Rng;

/// Fresh weights for `config`, drawn from `rng` in name order (reproducible).
pub fn init_weights(config: &ModelConfig, rng: &mut Rng) -> Result<Weights> {
    // Building the model over a VarMap enumerates every parameter name and shape once.
    let varmap = VarMap::new();
    build(
        config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .map_err(|e| Error::config("<init>", e))?;
    let shapes: BTreeMap<String, Vec<usize>> = varmap
        .data()
        .lock()
        .map_err(|_| Error::Input("variable map poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let residual_std = 0.02 / (2.0 * config.num_layers as f64).sqrt();
    let mut tensors = BTreeMap::new();
    for (name, dims) in shapes {
        let n: usize = dims.iter().product();
        let is_norm = dims.len() == 1 && name.ends_with(".weight");
        let data: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; n]
        } else if is_norm {
            vec![1.0; n]
        } else {
            // LLaDA's: `attn_out` and the blocks' `ff_out` (the head is `transformer.ff_out`).
            let residual = [
                "attn.c_proj.",
                "mlp.c_proj.",
                "o_proj.",
                "down_proj.",
                "attn_out.",
            ]
            .iter()
            .any(|p| name.contains(p))
                || name.contains(".blocks.") && name.contains(".ff_out.");
            let std = if residual { residual_std } else { 0.02 };
            (0..n).map(|_| (rng.normal() * std) as f32).collect()
        };
        tensors.insert(name, Tensor::from_vec(data, dims, &Device::Cpu)?);
    }
    Ok(Weights::new(tensors, "<random init>"))
}
