//! The HF `config.json` a GGUF's hyper-parameters describe, in each family's own keys.

use serde_json::{json, Value};

use super::GgufLlamaParams;
use crate::model::Architecture;

impl GgufLlamaParams {
    /// The HF config a GGUF's hyper-parameters describe: `LlamaConfig` keys (Dream's are Qwen2's,
    /// the same), LLaDA's own.
    pub fn hf_config(&self) -> Value {
        let p = self;
        let (class, model_type) = match p.arch {
            Architecture::Llada => return p.llada_config(),
            Architecture::Dream => ("DreamModel", "Dream"),
            _ => ("LlamaForCausalLM", "llama"),
        };
        let mut config = json!({
            "architectures": [class],
            "model_type": model_type,
            "vocab_size": p.vocab,
            "hidden_size": p.hidden,
            "intermediate_size": p.ffn,
            "num_hidden_layers": p.n_layer,
            "num_attention_heads": p.n_head,
            "num_key_value_heads": p.n_kv_head,
            "head_dim": p.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": p.context_length,
            "rms_norm_eps": p.rms_eps,
            "rope_theta": p.rope_theta,
            "rope_scaling": null,
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": p.tied,
            "bos_token_id": p.bos_id,
            "eos_token_id": p.eos_id,
            "pad_token_id": p.pad_id,
            "initializer_range": 0.02,
            "use_cache": true,
        });
        if p.arch == Architecture::Dream {
            // Qwen2 has q/k/v biases and no `attention_bias` key.
            if let Some(c) = config.as_object_mut() {
                c.remove("attention_bias");
            }
            config["mask_token_id"] = p.mask_id.into();
        }
        config
    }

    /// LLaDA's `ModelConfig` keys for the LLaMA block it uses.
    fn llada_config(&self) -> Value {
        let p = self;
        json!({
            "architectures": ["LLaDAModelLM"],
            "model_type": "llada",
            "block_type": "llama",
            "activation_type": "silu",
            "layer_norm_type": "rms",
            "rope": true,
            "include_bias": false,
            "include_qkv_bias": false,
            "d_model": p.hidden,
            "n_heads": p.n_head,
            "n_kv_heads": p.n_kv_head,
            "n_layers": p.n_layer,
            "mlp_hidden_size": p.ffn,
            "embedding_size": p.vocab,
            "vocab_size": p.vocab,
            "max_sequence_length": p.context_length,
            "rms_norm_eps": p.rms_eps,
            "rope_theta": p.rope_theta,
            "weight_tying": p.tied,
            "bos_token_id": p.bos_id,
            "eos_token_id": p.eos_id,
            "pad_token_id": p.pad_id,
            "mask_token_id": p.mask_id,
        })
    }
}
