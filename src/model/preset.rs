//! Named model sizes for training from scratch, as HF `config.json` values.

use serde_json::{json, Value};

use super::Architecture;
use crate::named::{display_and_from_str, Named};

/// A named size; `Small` is GPT-2 small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Tiny,
    Mini,
    Small,
}

impl Size {
    /// (layers, width, heads).
    pub fn dims(self) -> (usize, usize, usize) {
        match self {
            Self::Tiny => (2, 64, 4),
            Self::Mini => (6, 384, 6),
            Self::Small => (12, 768, 12),
        }
    }

    /// The HF config of a model of this size: `context` positions, tied embeddings, `eos` as BOS
    /// and EOS.
    pub fn hf_config(
        self,
        arch: Architecture,
        vocab: usize,
        context: usize,
        eos: Option<u32>,
    ) -> Value {
        let (layers, d, heads) = self.dims();
        match arch {
            Architecture::Gpt2 => json!({
                "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab,
                "n_positions": context, "n_embd": d, "n_layer": layers, "n_head": heads,
                "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": true,
                "bos_token_id": eos, "eos_token_id": eos,
            }),
            Architecture::Llama => json!({
                "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
                "hidden_size": d, "intermediate_size": d * 8 / 3 / 64 * 64 + 64, "num_hidden_layers": layers,
                "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": context,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": true,
                "bos_token_id": eos, "eos_token_id": eos,
            }),
            Architecture::Llada => json!({
                "model_type": "llada", "architectures": ["LLaDAModelLM"], "block_type": "llama",
                "vocab_size": vocab, "embedding_size": vocab, "d_model": d, "n_heads": heads, "n_kv_heads": heads,
                "n_layers": layers, "mlp_hidden_size": d * 8 / 3 / 64 * 64 + 64, "max_sequence_length": context,
                "activation_type": "silu", "layer_norm_type": "rms", "rms_norm_eps": 1e-5, "rope": true,
                "rope_theta": 500000.0, "include_bias": false, "include_qkv_bias": false, "weight_tying": true,
                "eos_token_id": eos, "pad_token_id": eos,
            }),
            // Qwen2's keys are LLaMA's; Dream differs in its type, norm epsilon and rope base.
            Architecture::Dream => {
                let mut config = self.hf_config(Architecture::Llama, vocab, context, eos);
                for (key, value) in [
                    ("model_type", json!("Dream")),
                    ("architectures", json!(["DreamModel"])),
                    ("rms_norm_eps", json!(1e-6)),
                    ("rope_theta", json!(1000000.0)),
                ] {
                    config[key] = value;
                }
                config
            }
        }
    }
}

impl Named for Size {
    const WHAT: &'static str = "size";
    const ALL: &'static [Self] = &[Self::Tiny, Self::Mini, Self::Small];

    fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Mini => "mini",
            Self::Small => "small",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::Tiny => "2 layers, width 64, 4 heads",
            Self::Mini => "6 layers, width 384, 6 heads",
            Self::Small => "12 layers, width 768, 12 heads (GPT-2 small)",
        }
    }
}
display_and_from_str!(Size);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::named::Named;

    /// Every architecture's sizes resolve to the architecture they name.
    #[test]
    fn every_architecture_has_sizes() {
        for &arch in Architecture::ALL {
            for &size in Size::ALL {
                let json = size.hf_config(arch, 300, 256, Some(0));
                let c = ModelConfig::from_json(json, std::path::Path::new("<preset>")).unwrap();
                assert_eq!((c.arch, c.num_layers), (arch, size.dims().0));
                assert_eq!((c.hidden_size, c.vocab_size), (size.dims().1, 300));
            }
        }
    }
}
