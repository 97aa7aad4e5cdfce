//! LoRA (Hu et al., 2021) for fine-tuning: every linear weight W of the blocks stays frozen and
//! learns a low-rank update, W' = W + (α/r)·B·A with A [r, in] and B [out, r] (B starts at zero, so
//! step 0 is the base model). The effective weights are rebuilt from W, A and B before each
//! forward, so gradients reach A and B through ordinary ops and the model code knows nothing of
//! adapters; exporting a checkpoint writes the merged W'.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Architecture;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::option("lora_rank", "must be at least 1"));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(Error::option(
                "lora_alpha",
                format!("must be positive, not {}", self.alpha),
            ));
        }
        Ok(())
    }
}

/// Whether a checkpoint tensor is the weight of a linear layer inside the blocks (attention and
/// MLP projections); embeddings, the LM head and norms are not adapted.
pub fn is_adapted(name: &str, t: &Tensor) -> bool {
    t.rank() == 2
        && name.ends_with(".weight")
        && ![
            "wte",
            "wpe",
            "embed_tokens",
            "lm_head",
            "transformer.ff_out",
        ]
        .iter()
        .any(|n| name.contains(n))
}

/// Names of the two factors of an adapted weight (PEFT's naming).
pub fn factor_names(weight: &str) -> (String, String) {
    let stem = weight.trim_end_matches(".weight");
    (
        format!("{stem}.lora_A.weight"),
        format!("{stem}.lora_B.weight"),
    )
}

/// Fresh factors for `weight`: A ~ U(−1/√in, 1/√in) (as PEFT's Kaiming-uniform default), B = 0.
/// `in`/`out` follow the architecture's layout: GPT-2's Conv1D stores [in, out].
pub fn init_factors(
    arch: Architecture,
    weight: &Tensor,
    rank: usize,
    rng: &mut Rng,
) -> Result<(Tensor, Tensor)> {
    let (rows, cols) = weight.dims2()?;
    let (d_in, d_out) = match arch {
        Architecture::Gpt2 => (rows, cols),
        _ => (cols, rows),
    };
    let bound = 1.0 / (d_in as f64).sqrt();
    let a: Vec<f32> = (0..rank * d_in)
        .map(|_| ((2.0 * rng.uniform_f64() - 1.0) * bound) as f32)
        .collect();
    let device = weight.device();
    Ok((
        Tensor::from_vec(a, (rank, d_in), device)?,
        Tensor::zeros((d_out, rank), DType::F32, device)?,
    ))
}

/// W + scale·B·A in W's stored layout: a graph node, so its gradient flows to A and B.
pub fn merged(
    arch: Architecture,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let delta = (b.matmul(a)? * scale)?; // [out, in]
    let delta = match arch {
        Architecture::Gpt2 => delta.t()?,
        _ => delta,
    };
    Ok(w.add(&delta)?)
}

/// The frozen base and its trainable factors.
pub struct Adapter {
    pub config: LoraConfig,
    pub arch: Architecture,
    /// Every base tensor, frozen (a tied matrix once, under the embedding's name).
    pub base: BTreeMap<String, Tensor>,
}

impl Adapter {
    /// The effective weights: the base with every adapted weight merged with its factors.
    pub fn effective(&self, vars: &BTreeMap<String, Var>) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, w) in &self.base {
            let (a, b) = factor_names(name);
            let t = match (vars.get(&a), vars.get(&b)) {
                (Some(a), Some(b)) => merged(
                    self.arch,
                    w,
                    a.as_tensor(),
                    b.as_tensor(),
                    self.config.scale(),
                )?,
                _ => w.clone(),
            };
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    /// Checks that saved factors match the base (names and shapes), for a resumed run.
    pub fn check_factors(&self, factors: &BTreeMap<String, Tensor>) -> Result<()> {
        let adapted = self.base.iter().filter(|(n, w)| is_adapted(n, w));
        for name in adapted.map(|(n, _)| n) {
            let (a, b) = factor_names(name);
            for f in [&a, &b] {
                if !factors.contains_key(f) {
                    return Err(Error::Input(format!(
                        "the saved adapter lacks `{f}` for `{name}`"
                    )));
                }
            }
            let (rank, _) = factors[&a].dims2()?;
            if rank != self.config.rank || factors[&b].dim(1)? != rank {
                return Err(Error::Input(format!(
                    "the saved adapter of `{name}` has rank {rank}, the run says {}",
                    self.config.rank
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn merge_matches_the_low_rank_forward_in_both_layouts() {
        // x·W'ᵀ must equal x·Wᵀ + s·(x·Aᵀ)·Bᵀ (OutIn); for InOut, x·W' likewise.
        let dev = Device::Cpu;
        let mut rng = Rng::seed(3);
        let x = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let a = Tensor::randn(0f32, 1.0, (2, 4), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (3, 2), &dev).unwrap();
        let low_rank = (x
            .matmul(&a.t().unwrap())
            .unwrap()
            .matmul(&b.t().unwrap())
            .unwrap()
            * 0.5)
            .unwrap();
        let w_out_in = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let m = merged(Architecture::Llama, &w_out_in, &a, &b, 0.5).unwrap();
        let want = (x.matmul(&w_out_in.t().unwrap()).unwrap() + &low_rank).unwrap();
        let got = x.matmul(&m.t().unwrap()).unwrap();
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        let w_in_out = w_out_in.t().unwrap().contiguous().unwrap();
        let m = merged(Architecture::Gpt2, &w_in_out, &a, &b, 0.5).unwrap();
        let want = (x.matmul(&w_in_out).unwrap() + &low_rank).unwrap();
        let d = (x.matmul(&m).unwrap() - want).unwrap().abs().unwrap();
        assert!(d.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-5);
        // Fresh factors leave the base unchanged: B is zero.
        let (a0, b0) = init_factors(Architecture::Llama, &w_out_in, 2, &mut rng).unwrap();
        assert_eq!(a0.dims(), &[2, 4]);
        assert_eq!(b0.dims(), &[3, 2]);
        let m = merged(Architecture::Llama, &w_out_in, &a0, &b0, 8.0).unwrap();
        let d = (m - &w_out_in).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn only_block_linears_are_adapted() {
        let dev = Device::Cpu;
        let m = Tensor::zeros((2, 2), DType::F32, &dev).unwrap();
        let v = Tensor::zeros(2, DType::F32, &dev).unwrap();
        assert!(is_adapted("model.layers.0.self_attn.q_proj.weight", &m));
        // LLaDA's head and its blocks' down projections share the leaf `ff_out`.
        assert!(!is_adapted("model.transformer.ff_out.weight", &m));
        assert!(is_adapted("model.transformer.blocks.0.ff_out.weight", &m));
        assert!(is_adapted("h.3.mlp.c_fc.weight", &m));
        assert!(!is_adapted("model.embed_tokens.weight", &m));
        assert!(!is_adapted("lm_head.weight", &m));
        assert!(!is_adapted("wte.weight", &m));
        assert!(!is_adapted("model.norm.weight", &v));
        assert!(!is_adapted("h.3.mlp.c_fc.bias", &v));
    }
}
