//! Trainable parameters: every checkpoint tensor becomes a `Var` under its HF name, and the model
//! is built over those same tensors, so gradients land on the names checkpoints use.
//!
//! Mixed precision (`Precision::Bf16`), as PyTorch's autocast: the variables (master weights)
//! stay f32 and the model reads them; every linear layer computes its products in bf16 operands
//! (`Linear::compute_in_bf16`: the weight rounded to bf16 as the product packs it, linear_bf16.rs)
//! with f32 accumulation, and so do attention's products (`attention_in_bf16`, as autocast's
//! bmm), while embedding lookups, norms, biases, softmax and the loss stay f32. A linear's weight gradient comes back f32, onto the variable; all-reduce, clipping and
//! AdamW see f32 gradients, and checkpoints hold the f32 masters. As under autocast, a tied LM
//! head multiplies in bf16 too, while the same table's lookups read f32.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::lora::{factor_names, init_factors, is_adapted, Adapter, LoraConfig};
use crate::error::{Error, Result};
use crate::model::runtime::WeightDtype;
use crate::model::{build, LanguageModel, ModelConfig, Weights};
use crate::ops::Dropout;
use crate::rng::Rng;

/// The dtype of a training forward and backward pass. Parameters and AdamW moments are f32 under
/// either; f16 is not offered, since without loss scaling its small gradients underflow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    /// The spellings `--dtype` accepts everywhere (`WeightDtype`), less f16.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.parse::<WeightDtype>() {
            Ok(WeightDtype::F32) => Ok(Self::F32),
            Ok(WeightDtype::Bf16) => Ok(Self::Bf16),
            _ => Err(format!(
                "training computes in f32 or bf16, not `{s}` (f16 would need loss scaling)"
            )),
        }
    }
}

pub struct TrainableModel {
    pub config: ModelConfig,
    /// Trained parameters by name: the HF parameters (a tied matrix appears once, under the
    /// embedding's name), or with LoRA only the adapter factors.
    pub vars: BTreeMap<String, Var>,
    pub model: Box<dyn LanguageModel>,
    /// LoRA: the frozen base the factors adapt.
    pub adapter: Option<Adapter>,
    /// The dtype the model computes in (the variables are f32 regardless).
    precision: Precision,
    /// Training dropout, given to every model built over the variables (`set_dropout`).
    dropout: Option<Arc<Dropout>>,
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
            adapter: None,
            precision: Precision::F32,
            dropout: None,
        })
    }

    /// LoRA fine-tuning: `weights` frozen, factors for every block linear (from `factors` when
    /// resuming, else freshly drawn from `rng`) trained.
    pub fn with_lora(
        config: &ModelConfig,
        weights: &Weights,
        lora: LoraConfig,
        factors: Option<&Weights>,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Self> {
        lora.validate()?;
        let mut base = BTreeMap::new();
        for (name, t) in weights.iter() {
            if config.tie_word_embeddings && name == "lm_head.weight" {
                continue;
            }
            base.insert(name.clone(), t.to_device(device)?.to_dtype(DType::F32)?);
        }
        let adapter = Adapter {
            config: lora,
            arch: config.arch,
            base,
        };
        let mut vars = BTreeMap::new();
        match factors {
            Some(saved) => {
                let saved: BTreeMap<String, Tensor> = saved
                    .iter()
                    .map(|(n, t)| Ok((n.clone(), t.to_device(device)?.to_dtype(DType::F32)?)))
                    .collect::<Result<_>>()?;
                adapter.check_factors(&saved)?;
                for (name, t) in saved {
                    vars.insert(name, Var::from_tensor(&t)?);
                }
            }
            None => {
                for (name, w) in adapter.base.iter().filter(|(n, w)| is_adapted(n, w)) {
                    let (a, b) = init_factors(config.arch, w, lora.rank, rng)?;
                    let (na, nb) = factor_names(name);
                    vars.insert(na, Var::from_tensor(&a)?);
                    vars.insert(nb, Var::from_tensor(&b)?);
                }
            }
        }
        if vars.is_empty() {
            return Err(Error::Input(
                "LoRA found no linear layer to adapt in this model".into(),
            ));
        }
        let mut model = Self {
            config: config.clone(),
            vars,
            model: build(config, weights.var_builder(DType::F32, device))
                .map_err(|e| Error::checkpoint(weights.source(), e))?,
            adapter: Some(adapter),
            precision: Precision::F32,
            dropout: None,
        };
        model.rebuild(weights.source())?;
        Ok(model)
    }

    /// Computes in `precision` from now on (the model is rebuilt, its linears set to it).
    pub fn set_precision(&mut self, precision: Precision, source: &std::path::Path) -> Result<()> {
        self.precision = precision;
        self.build_model(source)
    }

    /// Trains with dropout `p` on the residual stream (`LanguageModel::set_dropout`); 0 turns it
    /// off. Off outside the steps the trainer marks (`dropout`), so validation sees the model
    /// whole. An architecture without it refuses any p > 0.
    pub fn set_dropout(&mut self, p: f32) -> Result<()> {
        let dropout = match p {
            0.0 => None,
            _ => Some(Arc::new(
                Dropout::new(p).map_err(|e| Error::option("dropout", e))?,
            )),
        };
        if !self.model.set_dropout(dropout.clone()) && dropout.is_some() {
            return Err(Error::option(
                "dropout",
                format!(
                    "not implemented for the {:?} architecture",
                    self.config.arch
                ),
            ));
        }
        self.dropout = dropout;
        Ok(())
    }

    /// The training dropout, if any: the trainer turns it on for each step's micro-batches.
    pub fn dropout(&self) -> Option<&Dropout> {
        self.dropout.as_deref()
    }

    /// Rebuilds the model from the current variables where it does not read them directly: with
    /// LoRA over W + (α/r)·B·A (a copy, made stale by an update). Call after every update;
    /// without LoRA the model already reads the variables, in either precision.
    pub fn rebuild(&mut self, source: &std::path::Path) -> Result<()> {
        if self.adapter.is_none() {
            return Ok(());
        }
        self.build_model(source)
    }

    /// Builds the model over the current effective weights, cast to the compute dtype.
    fn build_model(&mut self, source: &std::path::Path) -> Result<()> {
        let effective = match &self.adapter {
            Some(adapter) => adapter.effective(&self.vars)?,
            None => self
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect(),
        };
        let view = Weights::new(effective, source);
        let device = self.vars.values().next().map(|v| v.device().clone());
        let device = device.unwrap_or(Device::Cpu);
        self.model = build(&self.config, view.var_builder_as_stored(&device))
            .map_err(|e| Error::checkpoint(source, e))?;
        if self.precision == Precision::Bf16 {
            for linear in self.model.linears_mut() {
                linear.compute_in_bf16();
            }
            self.model.attention_in_bf16();
        }
        self.model.set_dropout(self.dropout.clone());
        Ok(())
    }

    /// The current model values, for saving: with LoRA, the merged weights.
    pub fn weights(&self, source: &std::path::Path) -> Result<Weights> {
        let tensors = match &self.adapter {
            Some(adapter) => adapter
                .effective(&self.vars)?
                .into_iter()
                .map(|(k, t)| Ok((k, t.detach())))
                .collect::<Result<_>>()?,
            None => self
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect(),
        };
        Ok(Weights::new(tensors, source))
    }

    /// The trained factors (LoRA) by name; empty without LoRA.
    pub fn factors(&self) -> Vec<(String, Tensor)> {
        match self.adapter {
            Some(_) => self
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect(),
            None => Vec::new(),
        }
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
