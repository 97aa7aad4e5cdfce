//! Shared helpers for the tests: fixture paths, tensor comparison, the tiny training corpus.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub const TINY: [&str; 3] = ["gpt2-tiny", "llama-tiny", "llama-tiny-tied"];

/// The golden tensors of a tiny fixture.
pub fn golden(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu)
        .expect("golden.safetensors")
}

pub fn golden_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

/// Max |a − b| over all entries, after both are cast to f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Asserts closeness and prints the measured difference next to the tolerance, as llm.c does.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f32) {
    let d = max_abs_diff(got, want);
    println!("{what}: max |Δ| = {d:.3e} (atol {atol:.0e})");
    assert!(d <= atol, "{what}: max |Δ| = {d:e} exceeds {atol:e}");
}

pub fn ids_u32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

/// A small random-weight diffusion LM with a tokenizer, written to `dir`: byte-level BPE (300
/// ids) trained on the fixture texts, `<|endoftext|>` as BOS/EOS, an added `<|mask|>`, a 2-layer
/// GPT-2 with a 256-position context and an untied head (a tied random head proposes the input
/// token, here the mask, everywhere), and a ChatML chat template. Its text is noise, but every
/// path from a request to text runs through it.
pub fn tiny_dlm_dir(dir: &std::path::Path) -> PathBuf {
    use dlm::data::tokenizer_train::train_bpe_texts;
    use dlm::model::ModelConfig;
    use dlm::rng::Rng;
    use dlm::train::init::init_weights;

    let text = std::fs::read_to_string(fixture("data/wiki_small.txt")).expect("wiki_small.txt");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut tok = train_bpe_texts(lines.into_iter(), 300, &["<|endoftext|>".into()]).unwrap();
    let eos = tok.token_to_id("<|endoftext|>").unwrap();
    let mask = tok.add_special_token("<|mask|>").unwrap();
    let value = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": tok.vocab_size(), "n_positions": 256, "n_embd": 32, "n_layer": 2,
        "n_head": 4, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": false, "bos_token_id": eos, "eos_token_id": eos,
        "mask_token_id": mask,
    });
    let mut config = ModelConfig::from_json(value, std::path::Path::new("<tiny>")).unwrap();
    config.mask_token_id = Some(mask);
    let weights = init_weights(&config, &mut Rng::seed(3)).unwrap();
    let out = dir.join("tiny-dlm");
    weights.save_dir(&out, &config, DType::F32).unwrap();
    tok.save(&out.join("tokenizer.json")).unwrap();
    let chat = serde_json::json!({"chat_template":
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"});
    std::fs::write(out.join("tokenizer_config.json"), chat.to_string()).unwrap();
    out
}

/// The tiny training corpus (files under tests/fixtures/data).
pub fn training_data() -> String {
    format!("{}/tests/fixtures/data", env!("CARGO_MANIFEST_DIR"))
}

/// A 400-token byte-level BPE trained on the tiny corpus with `dlm tokenizer train`: DIR/tok.json.
pub fn train_tokenizer(dir: &std::path::Path) -> PathBuf {
    let tok = dir.join("tok.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(["tokenizer", "train", "--vocab-size", "400", "--data"])
        .arg(training_data())
        .arg("--out")
        .arg(&tok)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dlm tokenizer train: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tok
}
