//! Trainable parameters: every checkpoint tensor becomes a `Var` under its HF name, and the model
//! is built over those same tensors, so gradients land on the names checkpoints use.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};

use crate::error::{Error, Result};
use crate::model::{build, LanguageModel, ModelConfig, Weights};

pub struct TrainableModel {
    pub config: ModelConfig,
    /// Parameters by HF name (a tied matrix appears once, under the embedding's name).
    pub vars: BTreeMap<String, Var>,
    pub model: Box<dyn LanguageModel>,
}

impl TrainableModel {
    /// Copies `weights` into fresh f32 variables on `device` and builds the model over them.
    pub fn new(config: &ModelConfig, weights: &Weights, device: &Device) -> Result<Self> {
        let mut vars = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        for (name, t) in weights.iter() {
            if config.tie_word_embeddings && name == "lm_head.weight" {
                continue;
            }
            let var = Var::from_tensor(&t.to_device(device)?.to_dtype(DType::F32)?)?;
            tensors.insert(name.clone(), var.as_tensor().clone());
            vars.insert(name.clone(), var);
        }
        let view = Weights::new(tensors, weights.source());
        let model = build(config, view.var_builder(DType::F32, device))
            .map_err(|e| Error::checkpoint(weights.source(), e))?;
        Ok(Self {
            config: config.clone(),
            vars,
            model,
        })
    }

    /// The current values, for saving.
    pub fn weights(&self, source: &std::path::Path) -> Weights {
        let tensors = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        Weights::new(tensors, source)
    }

    /// Gradients by parameter name; a parameter the loss does not reach gets zeros.
    pub fn gradients(&self, grads: &GradStore) -> Result<Vec<(String, Tensor)>> {
        self.vars
            .iter()
            .map(|(name, var)| {
                let g = match grads.get(var.as_tensor()) {
                    Some(g) => g.clone(),
                    None => var.as_tensor().zeros_like()?,
                };
                Ok((name.clone(), g))
            })
            .collect()
    }

    pub fn num_parameters(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}
