//! Bad checkpoints and configs give clear errors naming the file and tensor, never a panic; the
//! binary exits non-zero with the message.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{dlm_fails, fixture, tiny_dlm_dir};
use dlm::data::chat::ChatTemplate;
use dlm::data::tokenizer::Tokenizer;
use dlm::model::load_dir;

/// A copy of a tiny fixture model (config + weights) in a temp dir, to be damaged.
fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match load_dir(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn rewrite_weights(dir: &Path, edit: impl Fn(&mut std::collections::HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut ts = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut ts);
    candle_core::safetensors::save(&ts, &path).unwrap();
}

#[test]
fn truncated_safetensors() {
    let dir = copy_model("llama-tiny");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = load_err(dir.path());
        assert!(
            e.contains("model.safetensors") && e.contains("corrupt or truncated"),
            "{e}"
        );
    }
}

#[test]
fn corrupt_safetensors_header() {
    let dir = copy_model("gpt2-tiny");
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] = b'!';
    std::fs::write(&path, &bytes).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_model("llama-tiny");
    rewrite_weights(dir.path(), |ts| {
        ts.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"),
        "{e}"
    );
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn misshaped_tensor_is_named() {
    let dir = copy_model("gpt2-tiny");
    rewrite_weights(dir.path(), |ts| {
        ts.insert(
            "transformer.h.0.attn.c_attn.weight".into(),
            Tensor::zeros((32, 95), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("transformer.h.0.attn.c_attn.weight") && e.contains("[32, 95]"),
        "{e}"
    );
}

#[test]
fn no_weights_file() {
    let dir = copy_model("llama-tiny");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("no model.safetensors"), "{e}");
}

#[test]
fn unservable_configs_are_refused_by_name() {
    let cases = [
        (
            r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#,
            "rope scaling `llama3`",
        ),
        (r#""hidden_act": "gelu""#, "activation `gelu`"),
        (r#""model_type": "mistral""#, "model_type `mistral`"),
        (r#""num_key_value_heads": 3"#, "not a multiple of 3"),
    ];
    for (patch, want) in cases {
        let dir = copy_model("llama-tiny");
        let path = dir.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let extra: serde_json::Value = serde_json::from_str(&format!("{{{patch}}}")).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        std::fs::write(&path, cfg.to_string()).unwrap();
        let e = load_err(dir.path());
        assert!(
            e.contains(want) && e.contains("config.json"),
            "{patch}: {e}"
        );
    }
}

#[test]
fn binary_exits_nonzero_with_message() {
    let dir = copy_model("llama-tiny");
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let stderr = dlm_fails([OsStr::new("info"), dir.path().as_os_str()]);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("model.safetensors"),
        "{stderr}"
    );

    let stderr = dlm_fails([
        "score",
        fixture("llama-tiny").to_str().unwrap(),
        "--ids",
        "1,2,500",
        "--attention",
        "causal",
    ]);
    assert!(stderr.contains("token id 500 is out of vocabulary"));
}

fn assert_malformed(e: &str, file: &str) {
    assert!(e.contains(file) && e.contains("is malformed"), "{e}");
}

#[test]
fn malformed_tokenizer_config_is_reported_as_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_dlm_dir(tmp.path());
    let dir = model.to_str().unwrap();
    let config = model.join("tokenizer_config.json");
    for garbage in ["{\"chat_template\": ", "[\"chat_template\"]", "\u{0}\u{1}"] {
        std::fs::write(&config, garbage).unwrap();
        let e = ChatTemplate::load(&model).unwrap_err().to_string();
        assert_malformed(&e, "tokenizer_config.json");
        let e = dlm_fails(["generate", dir, "--prompt", "hi", "--chat", "--length", "2"]);
        assert_malformed(&e, "tokenizer_config.json");
    }
    // Absent, the file still means "this model cannot chat".
    std::fs::remove_file(&config).unwrap();
    let e = ChatTemplate::load(&model).unwrap_err().to_string();
    assert!(e.contains("has no chat_template"), "{e}");
}

#[test]
fn malformed_tokenizer_json_is_reported_as_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_dlm_dir(tmp.path());
    let dir = model.to_str().unwrap();
    std::fs::write(model.join("tokenizer.json"), "{\"model\": [1, 2").unwrap();
    let e = Tokenizer::from_model_dir(&model).unwrap_err().to_string();
    assert_malformed(&e, "tokenizer.json");
    // `info` used to describe such a model as one without a tokenizer.
    assert_malformed(&dlm_fails(["info", dir]), "tokenizer.json");
    let e = dlm_fails(["generate", dir, "--prompt", "hi", "--length", "2"]);
    assert_malformed(&e, "tokenizer.json");
    let e = dlm_fails(["score", dir, "--text", "hi"]);
    assert_malformed(&e, "tokenizer.json");
}
