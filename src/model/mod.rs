//! Architectures and their weights. A model maps token ids and an attention mask to hidden states
//! and logits; it knows nothing of noise, losses, sampling or training.

pub mod config;
pub mod dream;
pub mod gguf;
pub mod gpt2;
pub mod llada;
pub mod llama;
pub mod mask_token;
mod pass;
pub mod preset;
pub mod quantized;
pub mod runtime;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::{Architecture, ModelConfig};
pub use pass::KvCache;
pub use weights::Weights;

use crate::error::{Error, Result};
use crate::ops::{AttentionMask, Embedding, Greedy, Linear, WeightLayout};

/// A transformer language model: ids [B, L] → hidden [B, L, D] → logits [B, L, V].
pub trait LanguageModel: Send + Sync {
    fn config(&self) -> &ModelConfig;

    /// Final-norm hidden states for every position. With a cache, `ids` continue the cached
    /// sequence and their keys/values are appended to it.
    fn hidden(
        &self,
        ids: &Tensor,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor>;

    /// The LM head, [V, D].
    fn lm_head(&self) -> &Linear;

    /// Every linear layer, head included, for changes made once after loading.
    fn linears_mut(&mut self) -> Vec<&mut Linear>;

    /// For a bf16 model on the CPU whose matrices went to the packed kernel: activations in f32
    /// from here on (the token embedding emits f32 rows; norm weights and biases and position
    /// tables turn f32; the packed linears take f32 inputs and add their biases in f32). The
    /// kernel accumulates in f32 anyway, and this CPU path has fused kernels for f32 only, where
    /// candle's bf16 element-wise ops would convert every element of every op. Attention's two
    /// products are set to bf16 operands, as the linears' are, on the GEMM paths that multiply
    /// in bf16. Returns whether anything changed (false for any other dtype or device).
    fn widen_activations(&mut self) -> candle_core::Result<bool>;

    /// Mixed-precision training, as autocast's bmm: attention's products (forward and backward)
    /// in bf16 operands with f32 accumulation, on the GEMM paths that multiply in bf16.
    fn attention_in_bf16(&mut self);

    /// Training dropout (`--dropout`) on the residual stream: the embeddings' output and each
    /// block's attention and MLP outputs before they are added (GPT-2's `embd_pdrop` and
    /// `resid_pdrop` sites; attention probabilities are not dropped). Returns whether this
    /// architecture applies it.
    fn set_dropout(&mut self, dropout: Option<std::sync::Arc<crate::ops::Dropout>>) -> bool {
        let _ = dropout;
        false
    }

    /// The LM head applied to hidden rows [..., D] → [..., V]; callers pass only the rows they need.
    fn head(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        self.lm_head().forward(hidden)
    }

    /// The greedy choice (first maximum and its log-probability) of the head at each hidden row
    /// [..., D], without keeping the logits when the head's kernel allows.
    fn head_greedy(&self, hidden: &Tensor) -> candle_core::Result<Vec<Greedy>> {
        self.lm_head().greedy_rows(hidden)
    }

    /// Logits at every position.
    fn forward(&self, ids: &Tensor, mask: &AttentionMask) -> candle_core::Result<Tensor> {
        self.head(&self.hidden(ids, mask, None)?)
    }

    /// Logits [n, V] of selected positions only: `rows` indexes the flattened [B·L] positions.
    /// The head is the largest matmul of a small model; most callers need a fraction of rows.
    fn logits_rows(
        &self,
        ids: &Tensor,
        mask: &AttentionMask,
        rows: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.hidden(ids, mask, None)?;
        let (b, l, d) = hidden.dims3()?;
        self.head(&hidden.reshape((b * l, d))?.index_select(rows, 0)?)
    }
}

/// Equal-length token rows as the model's [B, L] u32 input.
pub fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> candle_core::Result<Tensor> {
    let l = rows.first().map_or(0, |r| r.len());
    if rows.iter().any(|r| r.len() != l) {
        candle_core::bail!("sequences of different lengths in one batch");
    }
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), l), device)
}

fn linear(
    vb: VarBuilder,
    d_in: usize,
    d_out: usize,
    bias: bool,
    layout: WeightLayout,
) -> candle_core::Result<Linear> {
    let bias = if bias {
        Some(vb.get(d_out, "bias")?)
    } else {
        None
    };
    if let Some(q) = quantized::find_quantized(&vb, d_in, d_out)? {
        return Linear::quantized(q, bias);
    }
    let weight = vb.get(layout.shape(d_in, d_out), "weight")?;
    Ok(Linear::new(weight, bias, layout))
}

/// The token embedding [V, D] under `vb` and the LM head: the same matrix when the two are tied,
/// else the `weight` under `head` (`lm_head` in HF's layouts, LLaDA's `model.transformer.ff_out`).
fn embedding_and_head(
    vb: VarBuilder,
    head: VarBuilder,
    cfg: &ModelConfig,
) -> candle_core::Result<(Embedding, Linear)> {
    let shape = (cfg.vocab_size, cfg.hidden_size);
    // A quantised table is dequantised once for look-ups; a tied head keeps the blocks.
    let (v, d) = shape;
    if let Some(q) = quantized::find_quantized(&vb, d, v)? {
        let table = q.dequantize_as(vb.dtype(), vb.device())?;
        let head = match cfg.tie_word_embeddings {
            true => Linear::quantized(q, None)?,
            false => linear(head, d, v, false, WeightLayout::OutIn)?,
        };
        return Ok((Embedding::new(table), head));
    }
    let embedding = vb.get(shape, "weight")?;
    let head = match cfg.tie_word_embeddings {
        true => Linear::new(embedding.clone(), None, WeightLayout::OutIn),
        false => linear(head, d, v, false, WeightLayout::OutIn)?,
    };
    Ok((Embedding::new(embedding), head))
}

/// Whether a model with this token embedding widens its activations for inference: bf16 on the
/// CPU (`LanguageModel::widen_activations`).
fn widens(embedding: &Embedding) -> bool {
    embedding.weight.dtype() == DType::BF16 && embedding.weight.device().is_cpu()
}

/// A small parameter (a norm's weight or bias, a position table) in f32.
fn widen(t: &mut Tensor) -> candle_core::Result<()> {
    *t = t.to_dtype(DType::F32)?;
    Ok(())
}

/// One block per layer, block i under `vb`'s `i`.
fn blocks<B>(
    vb: VarBuilder,
    cfg: &ModelConfig,
    load: impl Fn(VarBuilder, &ModelConfig) -> candle_core::Result<B>,
) -> candle_core::Result<Vec<B>> {
    (0..cfg.num_layers).map(|i| load(vb.pp(i), cfg)).collect()
}

/// Builds the architecture the config names from a VarBuilder (checkpoint or fresh variables).
pub fn build(config: &ModelConfig, vb: VarBuilder) -> candle_core::Result<Box<dyn LanguageModel>> {
    Ok(match config.arch {
        Architecture::Gpt2 => Box::new(gpt2::Gpt2::load(vb, config)?),
        Architecture::Llama => Box::new(llama::Llama::load(vb, config)?),
        Architecture::Llada => Box::new(llada::load(vb, config)?),
        Architecture::Dream => Box::new(dream::load(vb, config)?),
    })
}

/// A model directory in HF layout, loaded: config, weights by HF name, and the built model.
pub struct LoadedModel {
    /// The model directory (or the GGUF file it was loaded from).
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub weights: Weights,
    pub model: Box<dyn LanguageModel>,
}

impl LoadedModel {
    /// For a model that will only be run (sampling, scoring, serving): drops the checkpoint's
    /// map and keeps each bf16 CPU weight once, packed for the kernel, instead of twice
    /// (`Linear::release_for_inference`). Weights are released one at a time, so the peak is the
    /// model plus its largest matrix (LLaDA-8B: 16.0 GB stored, 17.2 GB peak RSS measured).
    /// Afterwards `weights` is empty and the model cannot be trained. Returns the number of
    /// weights released (0 unless bf16 on the CPU).
    pub fn release_for_inference(&mut self) -> Result<usize> {
        self.weights = Weights::new(Default::default(), self.weights.source());
        let mut released = 0;
        // Largest first: the one extra matrix a packing holds is then added before the freed
        // copies of the others pile up (the binary's allocator returns freed memory to the
        // system seconds later, not at once; measured on LLaDA-8B: 16.8 GiB peak in model
        // order, 16.1 GiB largest first).
        let mut linears = self.model.linears_mut();
        linears.sort_by_key(|l| std::cmp::Reverse(l.weight.elem_count()));
        for linear in linears {
            if linear
                .release_for_inference()
                .map_err(|e| Error::checkpoint(&self.dir, e))?
            {
                released += 1;
            }
        }
        if released > 0 {
            self.model
                .widen_activations()
                .map_err(|e| Error::checkpoint(&self.dir, e))?;
        }
        Ok(released)
    }
}

/// Loads `dir/config.json` and its safetensors (single file, sharded, or the DiffuGPT layout)
/// into `dtype` on `device`.
pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<LoadedModel> {
    let mut config = ModelConfig::from_file(&dir.join("config.json"))?;
    let weights = Weights::load_dir(dir, config.arch, dtype, device)?;
    if quantized::is_quantized(&weights) && !device.is_cpu() {
        return Err(Error::checkpoint(
            weights.source(),
            "kept-quantised weights run on the CPU only (dlm convert --model dequantises)",
        ));
    }
    if config.mask_token_id.is_none() {
        config.mask_token_id = mask_token::known_mask_id(&config);
    }
    let model = build(&config, weights.var_builder(dtype, device))
        .map_err(|e| Error::checkpoint(weights.source(), e))?;
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        config,
        weights,
        model,
    })
}

/// A llama-architecture GGUF file loaded for inference with its Q8_0/Q4_0/Q4_1/Q4_K matrices
/// kept quantised (CPU only); the rest of the weights take `dtype`.
pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<LoadedModel> {
    if !device.is_cpu() {
        return Err(Error::Input(format!(
            "{}: kept-quantised GGUF weights run on the CPU only (dlm convert --gguf dequantises)",
            path.display()
        )));
    }
    let f = gguf::GgufFile::open(path)?;
    let params = gguf::llama_params(&f)?;
    let tensors = gguf::llama_tensors_kept(&f, &params)?;
    drop(f);
    let mut config = ModelConfig::from_json(params.hf_config(), path)?;
    if config.mask_token_id.is_none() {
        config.mask_token_id = mask_token::known_mask_id(&config);
    }
    let weights = Weights::new(tensors.into_iter().collect(), path);
    let model = build(&config, weights.var_builder(dtype, device))
        .map_err(|e| Error::checkpoint(path, e))?;
    Ok(LoadedModel {
        dir: path.to_path_buf(),
        config,
        weights,
        model,
    })
}
