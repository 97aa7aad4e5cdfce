//! Checkpoint I/O in HF layout: `model.safetensors` or a sharded `model.safetensors.index.json`,
//! stored as f32/f16/bf16, plus the released DiffuGPT key layout (reference-semantics §4).
//! Every failure names the file and, where there is one, the tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::{Architecture, ModelConfig};
use crate::atomic::write_atomic;
use crate::error::{Error, Result};

/// Parameters by HF name.
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    /// Where they came from, for error messages.
    source: PathBuf,
}

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

fn dtype_of(st: safetensors::Dtype) -> Option<DType> {
    match st {
        safetensors::Dtype::F32 => Some(DType::F32),
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        safetensors::Dtype::F64 => Some(DType::F64),
        safetensors::Dtype::I64 => Some(DType::I64),
        safetensors::Dtype::U8 => Some(DType::U8),
        safetensors::Dtype::U32 => Some(DType::U32),
        _ => None,
    }
}

/// Reads every tensor of one safetensors file, converting floating tensors to `dtype`.
/// `keep` filters names before any data is copied.
pub fn read_safetensors(
    path: &Path,
    dtype: DType,
    device: &Device,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and dropped before this function returns; a concurrent
    // truncation of the file by another process is outside what dlm can defend against.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| {
        Error::checkpoint(
            path,
            format!("not a valid safetensors file (corrupt or truncated?): {e}"),
        )
    })?;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names.into_iter().filter(|n| keep(n)) {
        let view = st
            .tensor(&name)
            .map_err(|e| Error::checkpoint(path, format!("tensor `{name}`: {e}")))?;
        let stored = dtype_of(view.dtype()).ok_or_else(|| {
            Error::checkpoint(
                path,
                format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let t = Tensor::from_raw_buffer(view.data(), stored, view.shape(), device)
            .and_then(|t| {
                if t.dtype().is_float() {
                    t.to_dtype(dtype)
                } else {
                    Ok(t)
                }
            })
            .map_err(|e| Error::checkpoint(path, format!("tensor `{name}`: {e}")))?;
        release_pages(&mmap, view.data());
        out.push((name, t));
    }
    Ok(out)
}

/// Drops the mapped pages of a tensor that has been copied out, so a checkpoint's resident
/// size does not add a whole shard (several GB for a 7-8B model) to the peak of a load. Best
/// effort: a failure only leaves the pages to the kernel.
fn release_pages(mmap: &memmap2::Mmap, data: &[u8]) {
    #[cfg(unix)]
    {
        let offset = data.as_ptr() as usize - mmap.as_ptr() as usize;
        // SAFETY: the map is private, read-only and never written, so dropped pages read back
        // from the file with the same bytes: no reference into it can observe a change.
        let _ = unsafe {
            mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, data.len())
        };
    }
    #[cfg(not(unix))]
    let _ = (mmap, data);
}

/// Writes tensors as one safetensors file, atomically, with the `format: pt` metadata HF expects.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes =
        safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
            .map_err(|e| Error::checkpoint(path, e))?;
    write_atomic(path, &bytes)
}

/// HF GPT-2 buffers that are not parameters (old checkpoints stored them).
fn is_gpt2_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") && !name.contains("c_attn") || name.ends_with(".attn.masked_bias")
}

impl Weights {
    pub fn new(tensors: BTreeMap<String, Tensor>, source: impl Into<PathBuf>) -> Self {
        Self {
            tensors,
            source: source.into(),
        }
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    /// The tensors by name, consuming the map (each is freed when its caller drops it).
    pub fn into_tensors(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }

    /// Loads the safetensors of an HF model directory, normalising names to HF's
    /// `GPT2LMHeadModel` / `LlamaForCausalLM` keys.
    pub fn load_dir(dir: &Path, arch: Architecture, dtype: DType, device: &Device) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let keep = |n: &str| arch != Architecture::Gpt2 || !is_gpt2_buffer(n);
        let (source, raw) = if single.exists() {
            let t = read_safetensors(&single, dtype, device, keep)?;
            (single, t)
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let parsed: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::checkpoint(&index, format!("not valid JSON: {e}")))?;
            let map = parsed
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::checkpoint(&index, "no `weight_map` object"))?;
            let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            shards.sort();
            shards.dedup();
            let mut all = Vec::new();
            for shard in shards {
                all.extend(read_safetensors(&dir.join(shard), dtype, device, keep)?);
            }
            for name in map.keys() {
                if keep(name) && !all.iter().any(|(n, _)| n == name) {
                    return Err(Error::checkpoint(
                        &index,
                        format!("tensor `{name}` is listed but in no shard"),
                    ));
                }
            }
            (index, all)
        } else {
            return Err(Error::checkpoint(
                dir,
                format!("no {SINGLE_FILE} or {INDEX_FILE} (dlm reads safetensors; `dlm convert` imports GGUF)"),
            ));
        };
        Ok(Self::new(normalise_names(arch, raw), source))
    }

    /// A VarBuilder that serves these tensors, checking each requested shape.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// A VarBuilder that serves each tensor in the dtype it has here (mixed precision: bf16
    /// matrices beside f32 tables and norms), checking each requested shape.
    pub fn var_builder_as_stored(&self, device: &Device) -> VarBuilder<'static> {
        let backend = AsStored(self.clone());
        VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
    }

    /// Writes `config.json` and `model.safetensors` into `dir`, each atomically. A tied head is
    /// stored once, under the embedding's name, as HF does.
    pub fn save_dir(&self, dir: &Path, config: &ModelConfig, dtype: DType) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let dtype_name = match dtype {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            other => return Err(Error::Input(format!("cannot store weights as {other:?}"))),
        };
        let mut stored = Vec::new();
        for (name, t) in &self.tensors {
            if config.tie_word_embeddings && name == "lm_head.weight" {
                continue;
            }
            let t = if t.dtype().is_float() {
                t.to_dtype(dtype)?
            } else {
                t.clone()
            };
            stored.push((name.clone(), t.contiguous()?));
        }
        write_safetensors(&dir.join(SINGLE_FILE), &stored)?;
        let mut hf = config.to_hf_json(dtype_name);
        if let Some(obj) = hf.as_object_mut() {
            match super::quantized::quantization_config(self) {
                Some(q) => obj.insert("quantization_config".into(), q),
                None => obj.remove("quantization_config"),
            };
        }
        let json = serde_json::to_string_pretty(&hf).map_err(|e| Error::Input(e.to_string()))?;
        write_atomic(&dir.join("config.json"), json.as_bytes())
    }
}

/// Maps the key layouts dlm accepts onto HF names:
/// - DiffuGPT (`embed_tokens.*`, `denoise_model.*`, `lm_head.*`, from its `DiscreteDiffusionModel`
///   wrapper) → `transformer.wte.*`, `transformer.*`, `lm_head.*`;
/// - the original GPT-2 release without the `transformer.` prefix → with it.
fn normalise_names(arch: Architecture, raw: Vec<(String, Tensor)>) -> BTreeMap<String, Tensor> {
    let diffugpt = raw.iter().any(|(n, _)| n.starts_with("denoise_model."));
    let bare_gpt2 = arch == Architecture::Gpt2 && raw.iter().any(|(n, _)| n == "wte.weight");
    raw.into_iter()
        .map(|(name, t)| {
            let name = if diffugpt {
                match name.as_str() {
                    "embed_tokens.weight" => "transformer.wte.weight".to_string(),
                    n => n
                        .strip_prefix("denoise_model.")
                        .map_or_else(|| n.to_string(), |rest| format!("transformer.{rest}")),
                }
            } else if bare_gpt2 && !name.starts_with("lm_head.") {
                format!("transformer.{name}")
            } else {
                name
            };
            (name, t)
        })
        .collect()
}

/// `Weights` served in their own dtypes (`var_builder_as_stored`).
struct AsStored(Weights);

impl SimpleBackend for AsStored {
    fn get(
        &self,
        s: Shape,
        name: &str,
        init: candle_nn::Init,
        _: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dtype = self.stored_dtype(name);
        SimpleBackend::get(&self.0, s, name, init, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let dtype = self.stored_dtype(name);
        SimpleBackend::get_unchecked(&self.0, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SimpleBackend::contains_tensor(&self.0, name)
    }
}

impl AsStored {
    /// A missing tensor's dtype does not matter: the inner backend's error names it.
    fn stored_dtype(&self, name: &str) -> DType {
        self.0.tensors.get(name).map_or(DType::F32, |t| t.dtype())
    }
}

impl SimpleBackend for Weights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "{}: tensor `{name}` has shape {:?}, the config needs {:?}",
                self.source.display(),
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: tensor `{name}` is missing",
                self.source.display()
            ))
        })?;
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
