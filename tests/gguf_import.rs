//! Import of the real SmolLM2-135M-Instruct Q4_1 GGUF: hyper-parameters against the golden
//! fixture, HF names and shapes, and dequantised values checked by hand from the raw bytes.

mod common;

use std::sync::OnceLock;

use candle_core::Tensor;
use common::smollm2_gguf as gguf_path;
use dlm::data::gguf_tokenizer::import_gguf_tokenizer;
use dlm::model::gguf::{import_llama_gguf, GgufFile, GgufImport};

/// Importing dequantises ~135M weights; do it once for all tests in this file.
fn import() -> &'static GgufImport {
    static IMPORT: OnceLock<GgufImport> = OnceLock::new();
    IMPORT.get_or_init(|| import_llama_gguf(&gguf_path()).unwrap())
}

fn tensor(name: &str) -> &'static Tensor {
    let imp = import();
    &imp.tensors
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1
}

fn golden() -> serde_json::Value {
    common::golden_json("smollm2-135m")
}

fn f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 32 imported values of quantisation block `k` of a row-major [rows, 576] weight: flat
/// elements 32k..32k+32.
fn block_values(w: &Tensor, k: usize) -> Vec<f32> {
    let (row, col) = (k * 32 / 576, k * 32 % 576);
    w.get(row)
        .unwrap()
        .narrow(0, col, 32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn params_match_golden() {
    let p = &import().params;
    let g = golden();
    let h = &g["model_hyperparameters"];
    let u = |k: &str| h[k].as_u64().unwrap() as usize;
    assert_eq!(p.n_layer, u("num_hidden_layers"));
    assert_eq!(p.hidden, u("hidden_size"));
    assert_eq!(p.n_head, u("num_attention_heads"));
    assert_eq!(p.n_kv_head, u("num_key_value_heads"));
    assert_eq!(p.head_dim, u("head_dim"));
    assert_eq!(p.ffn, u("intermediate_size"));
    assert_eq!(p.vocab, u("vocab_size"));
    assert_eq!(p.context_length, u("max_position_embeddings"));
    assert_eq!(p.rope_theta, h["rope_theta"].as_f64().unwrap());
    assert_eq!(p.rms_eps, h["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(p.tied, h["tie_word_embeddings"].as_bool().unwrap());
    assert_eq!(p.bos_id, Some(u("bos_token_id") as u32));
    assert_eq!(p.eos_id, Some(u("eos_token_id") as u32));
    assert!(p.name.is_some());
    let tmpl = import().chat_template.as_deref().unwrap();
    assert!(tmpl.contains("<|im_start|>"), "{tmpl}");
    let tokenizer = import_gguf_tokenizer(&gguf_path()).unwrap();
    assert_eq!(tokenizer.vocab_size(), 49152);
}

#[test]
fn tensors_have_hf_names_and_shapes() {
    let imp = import();
    assert_eq!(imp.tensors.len(), 272);
    assert!(imp.tensors.iter().all(|(n, _)| n != "lm_head.weight"));
    let dims = |n: &str| tensor(n).dims().to_vec();
    assert_eq!(dims("model.embed_tokens.weight"), [49152, 576]);
    assert_eq!(dims("model.norm.weight"), [576]);
    for i in [0, 29] {
        let l = format!("model.layers.{i}");
        assert_eq!(dims(&format!("{l}.input_layernorm.weight")), [576]);
        assert_eq!(dims(&format!("{l}.post_attention_layernorm.weight")), [576]);
        assert_eq!(dims(&format!("{l}.self_attn.q_proj.weight")), [576, 576]);
        assert_eq!(dims(&format!("{l}.self_attn.k_proj.weight")), [192, 576]);
        assert_eq!(dims(&format!("{l}.self_attn.v_proj.weight")), [192, 576]);
        assert_eq!(dims(&format!("{l}.self_attn.o_proj.weight")), [576, 576]);
        assert_eq!(dims(&format!("{l}.mlp.gate_proj.weight")), [1536, 576]);
        assert_eq!(dims(&format!("{l}.mlp.up_proj.weight")), [1536, 576]);
        assert_eq!(dims(&format!("{l}.mlp.down_proj.weight")), [576, 1536]);
    }
    for (n, t) in &imp.tensors {
        assert_eq!(t.dtype(), candle_core::DType::F32, "{n}");
    }
}

#[test]
fn q4_1_block_dequantised_by_hand() {
    let f = GgufFile::open(&gguf_path()).unwrap();
    let info = f.tensor("blk.3.ffn_up.weight").unwrap().clone();
    assert_eq!(info.type_name(), "Q4_1");
    assert_eq!(info.dims, [576, 1536]);
    let raw = f.tensor_bytes(&info).unwrap();
    let w = tensor("model.layers.3.mlp.up_proj.weight");
    for k in [0usize, 1, 17, 27_647] {
        let b = &raw[k * 20..k * 20 + 20];
        let (d, m) = (f16(b, 0), f16(b, 2));
        let got = block_values(w, k);
        for j in 0..32 {
            let q = if j < 16 {
                b[4 + j] & 0x0F
            } else {
                b[4 + j - 16] >> 4
            };
            assert_eq!(got[j], d * q as f32 + m, "block {k} element {j}");
        }
    }
}

#[test]
fn q8_0_block_dequantised_by_hand() {
    let f = GgufFile::open(&gguf_path()).unwrap();
    let info = f.tensor("token_embd.weight").unwrap().clone();
    assert_eq!(info.type_name(), "Q8_0");
    let raw = f.tensor_bytes(&info).unwrap();
    let w = tensor("model.embed_tokens.weight");
    for k in [0usize, 5, 18 * 7042 + 3] {
        let b = &raw[k * 34..k * 34 + 34];
        let d = f16(b, 0);
        let got = block_values(w, k);
        for j in 0..32 {
            assert_eq!(got[j], d * (b[2 + j] as i8) as f32, "block {k} element {j}");
        }
    }
}

#[test]
fn f32_norms_are_copied() {
    let f = GgufFile::open(&gguf_path()).unwrap();
    let info = f.tensor("blk.0.attn_norm.weight").unwrap().clone();
    assert_eq!(info.type_name(), "F32");
    let raw = f.tensor_bytes(&info).unwrap();
    let want: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let got: Vec<f32> = tensor("model.layers.0.input_layernorm.weight")
        .to_vec1()
        .unwrap();
    assert_eq!(got, want);
}

#[test]
fn q_and_k_rows_are_unpermuted() {
    let f = GgufFile::open(&gguf_path()).unwrap();
    for (gguf, hf, heads) in [
        (
            "blk.7.attn_q.weight",
            "model.layers.7.self_attn.q_proj.weight",
            9,
        ),
        (
            "blk.7.attn_k.weight",
            "model.layers.7.self_attn.k_proj.weight",
            3,
        ),
    ] {
        let raw = f.dequantize(f.tensor(gguf).unwrap()).unwrap();
        let w: Vec<Vec<f32>> = tensor(hf).to_vec2().unwrap();
        assert_eq!(w.len(), heads * 64);
        // HF row h*64 + s*32 + i is GGUF row h*64 + 2i + s.
        for h in 0..heads {
            for s in 0..2 {
                for i in [0, 1, 31] {
                    let r = h * 64 + 2 * i + s;
                    assert_eq!(
                        w[h * 64 + s * 32 + i],
                        raw[r * 576..(r + 1) * 576],
                        "{hf} h{h} s{s} i{i}"
                    );
                }
            }
        }
    }
}
