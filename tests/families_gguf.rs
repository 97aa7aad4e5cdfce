//! LLaDA and Dream GGUF files as llama.cpp's converter writes them (architectures `llada` and
//! `dream`: LLaMA tensor names under the family's metadata prefix; LLaDA's Q/K rows permuted as
//! for LLaMA, Dream's q/k/v biases and rows as HF stores them; Dream's mask id in
//! `tokenizer.ggml.mask_token_id`), written here from the fixtures' weights: `dlm convert`
//! gives back each family's own HF layout, whose logits match the golden ones.

mod common;

use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::gguf::{Gguf, V};
use common::*;
use dlm::model::{load_dir, Architecture};
use dlm::ops::AttentionMask;

/// A GGUF v3 file of tensors given in HF order ([out, in], row-major): F32, or with `q8_0` every
/// matrix whose rows are whole 32-element blocks as Q8_0 (quantised by candle's ggml port), as a
/// quantised llama.cpp conversion stores them (norms and biases stay F32).
fn write_gguf(path: &Path, kv: Vec<(String, V)>, tensors: &[(String, Tensor)], q8_0: bool) {
    let tensors = tensors
        .iter()
        .map(|(name, t)| {
            let dims = t.dims().iter().rev().map(|&d| d as u64).collect();
            if q8_0 && t.rank() == 2 && t.dim(1).unwrap() % 32 == 0 {
                let q = QTensor::quantize(t, GgmlDType::Q8_0).unwrap();
                return (name.clone(), dims, 8, q.data().unwrap().to_vec()); // type 8: Q8_0
            }
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let data = v.into_iter().flat_map(f32::to_le_bytes).collect();
            (name.clone(), dims, 0, data) // type 0: F32
        })
        .collect();
    std::fs::write(path, Gguf { kv, tensors }.write().0).unwrap();
}

/// llama.cpp's `permute` of Q/K rows for its interleaved RoPE:
/// `w.reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2)`.
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// llama.cpp's tensor name of a fixture tensor (its `tensor_mapping.py` entries for these).
fn gguf_name(hf: &str) -> String {
    let global = [
        ("model.transformer.wte.weight", "token_embd.weight"),
        ("model.transformer.ln_f.weight", "output_norm.weight"),
        ("model.transformer.ff_out.weight", "output.weight"),
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = global.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf
        .strip_prefix("model.transformer.blocks.")
        .or_else(|| hf.strip_prefix("model.layers."))
        .unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (module, kind) = rest.rsplit_once('.').unwrap();
    let g = match module {
        "attn_norm" | "input_layernorm" => "attn_norm",
        "ff_norm" | "post_attention_layernorm" => "ffn_norm",
        "q_proj" | "self_attn.q_proj" => "attn_q",
        "k_proj" | "self_attn.k_proj" => "attn_k",
        "v_proj" | "self_attn.v_proj" => "attn_v",
        "attn_out" | "self_attn.o_proj" => "attn_output",
        "ff_proj" | "mlp.gate_proj" => "ffn_gate",
        "up_proj" | "mlp.up_proj" => "ffn_up",
        "ff_out" | "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{g}.{kind}")
}

/// 128 GPT-2 byte-level tokens (bytes 0..128), no merges: enough for `dlm convert` to rebuild a
/// tokenizer.
fn byte_tokens() -> Vec<String> {
    (0u32..128)
        .map(|b| match b {
            33..=126 => char::from_u32(b).unwrap(),
            0..=32 => char::from_u32(256 + b).unwrap(),
            _ => char::from_u32(256 + 33).unwrap(),
        })
        .map(String::from)
        .collect()
}

/// The fixture `name` as llama.cpp's converter would write it for `arch` (matrices Q8_0 with
/// `q8_0`).
fn write_family_gguf(name: &str, arch: &'static str, path: &Path, q8_0: bool) {
    let m = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
    let c = &m.config;
    let int = |k: &str, v: usize| (format!("{arch}.{k}"), V::U32(v as u32));
    let float = |k: &str, v: f64| (format!("{arch}.{k}"), V::F32(v as f32));
    let mut kv = vec![
        ("general.architecture".to_string(), V::Str(arch)),
        int("block_count", c.num_layers),
        int("context_length", c.max_position_embeddings),
        int("embedding_length", c.hidden_size),
        int("feed_forward_length", c.intermediate_size),
        int("attention.head_count", c.num_heads),
        int("attention.head_count_kv", c.num_kv_heads),
        float("rope.freq_base", c.rope_theta),
        float("attention.layer_norm_rms_epsilon", c.norm_eps),
        ("tokenizer.ggml.model".to_string(), V::Str("gpt2")),
        ("tokenizer.ggml.pre".to_string(), V::Str("gpt2")),
        ("tokenizer.ggml.tokens".to_string(), V::Strs(byte_tokens())),
        ("tokenizer.ggml.merges".to_string(), V::Strs(vec![])),
        (
            "tokenizer.ggml.token_type".to_string(),
            V::I32s(vec![1; 128]),
        ),
        ("tokenizer.ggml.eos_token_id".to_string(), V::U32(120)),
        ("tokenizer.ggml.padding_token_id".to_string(), V::U32(120)),
    ];
    if arch == "dream" {
        kv.push(("tokenizer.ggml.mask_token_id".to_string(), V::U32(125)));
    }
    let tensors: Vec<(String, Tensor)> = m
        .weights
        .iter()
        .map(|(n, t)| {
            let g = gguf_name(n);
            let t = match (arch, g.rsplit('.').nth(1)) {
                ("llada", Some("attn_q")) => permute(t, c.num_heads),
                ("llada", Some("attn_k")) => permute(t, c.num_kv_heads),
                _ => t.clone(),
            };
            (g, t)
        })
        .collect();
    write_gguf(path, kv, &tensors, q8_0);
}

/// `dlm convert --gguf GGUF --out OUT`: OUT.
fn convert(gguf: &Path, out: &Path) -> std::path::PathBuf {
    dlm([
        "convert",
        "--gguf",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    out.to_path_buf()
}

#[test]
fn family_ggufs_convert_to_their_own_layout() {
    for (name, arch, family, mask) in [
        ("llada-tiny", "llada", Architecture::Llada, None),
        ("dream-tiny", "dream", Architecture::Dream, Some(125)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("model.gguf");
        write_family_gguf(name, arch, &gguf, false);
        let out = convert(&gguf, &dir.path().join("converted"));
        // This GGUF has no chat template: --chat on it says so, whichever way it is given.
        for model in [&gguf, &out] {
            let e = dlm_fails([
                "generate",
                model.to_str().unwrap(),
                "--chat",
                "--prompt",
                "hi",
                "--length",
                "2",
            ]);
            assert!(
                e.contains("chat_template") && !e.contains("panicked"),
                "{e}"
            );
        }
        let m = load_dir(&out, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.config.arch, family);
        assert_eq!(m.config.mask_token_id, mask, "{name}");
        // The family's own names, exactly the fixture's set.
        let want = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let names = |w: &dlm::model::Weights| w.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&m.weights), names(&want.weights), "{name}");
        let g = golden(name);
        let logits = m
            .model
            .forward(&ids_u32(&g["input_ids"]), &AttentionMask::Bidirectional)
            .unwrap();
        let golden_logits = &g["logits"];
        assert_close(
            &format!("{name} from GGUF"),
            &logits,
            golden_logits,
            2e-5 * max_abs(golden_logits),
        );
    }
}

#[test]
fn unknown_gguf_architectures_list_the_served_ones() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("model.gguf");
    let kv = vec![("general.architecture".to_string(), V::Str("qwen3"))];
    write_gguf(&gguf, kv, &[], false);
    let e = dlm_fails([
        "convert",
        "--gguf",
        gguf.to_str().unwrap(),
        "--out",
        "/nonexistent",
    ]);
    assert!(
        e.contains("\"qwen3\"")
            && e.contains("llada")
            && e.contains("dream")
            && e.contains("model.gguf"),
        "{e}"
    );
}

/// A Q8_0 GGUF of either family, given to the inference commands directly, keeps its matrices
/// quantised (int8 activations, src/ops/quant). Against the same file dequantised by `dlm
/// convert` (the weights' rounding alone), the logits differ by the int8 activations only: within
/// 10% of the largest golden logit (measured LLaDA 4.0%, Dream 5.1%; these 32-wide random models
/// amplify rounding); the dequantised model against the golden f32 logits by the weights'
/// rounding: within 10% (measured LLaDA 7.2%, Dream 6.3%). And `dlm generate` runs on the file (a .gguf path has no
/// generation_config.json to read: it once failed on that).
#[test]
fn quantised_family_ggufs_run_kept_quantised() {
    for (name, arch, family) in [
        ("llada-tiny", "llada", Architecture::Llada),
        ("dream-tiny", "dream", Architecture::Dream),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("model-q8_0.gguf");
        write_family_gguf(name, arch, &gguf, true);
        let m = dlm::model::load_gguf(&gguf, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.config.arch, family);
        assert!(dlm::model::quantized::is_quantized(&m.weights), "{name}");
        let out = convert(&gguf, &dir.path().join("dequantised"));
        let f32_model = load_dir(&out, DType::F32, &Device::Cpu).unwrap();
        let g = golden(name);
        let forward = |m: &dlm::model::LoadedModel| {
            m.model
                .forward(&ids_u32(&g["input_ids"]), &AttentionMask::Bidirectional)
                .unwrap()
        };
        let (kept, dequantised) = (forward(&m), forward(&f32_model));
        let want = &g["logits"];
        let scale = max_abs(want);
        let activations = max_abs_diff(&kept, &dequantised) / scale;
        let weights = max_abs_diff(&dequantised, want) / scale;
        println!("{name} Q8_0: int8 activations {activations:.4}, weights {weights:.4} of the largest logit");
        assert!(activations <= 0.1 && weights <= 0.1, "{name}");
        // llama.cpp's LLaDA GGUF records no mask id (as the converted directory shows): given.
        let want = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let mask = want.config.mask_token_id.unwrap().to_string();
        let run = dlm([
            "generate",
            gguf.to_str().unwrap(),
            "--prompt-ids",
            "5,6,7",
            "--length",
            "4",
            "--steps",
            "4",
            "--mask-id",
            &mask,
            "--json",
        ]);
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(stdout.contains("\"canvas\""), "{stdout}");
    }
}
