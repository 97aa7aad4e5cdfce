//! The LLaDA and Dream checkpoints as dlm reads them: the released config keys, what `dlm info`
//! says about each family, and every bad input refused with the file and the key or tensor named.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use dlm::model::{load_dir, Architecture};
use dlm::ops::AttentionMask;

/// A writable copy of a fixture's config.json and model.safetensors.
fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(file), dir.path().join(file)).unwrap();
    }
    dir
}

/// Sets (or with `None` removes) top-level keys of `dir/config.json`.
fn patch_config(dir: &Path, keys: &[(&str, Option<serde_json::Value>)]) {
    let path = dir.join("config.json");
    let mut cfg = read_json(&path);
    let map = cfg.as_object_mut().unwrap();
    for (k, v) in keys {
        match v {
            Some(v) => map.insert(k.to_string(), v.clone()),
            None => map.remove(*k),
        };
    }
    std::fs::write(&path, cfg.to_string()).unwrap();
}

/// Rewrites `dir/model.safetensors` through `edit`.
fn patch_tensors(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn load_err(dir: &Path) -> String {
    match load_dir(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn released_configs_resolve() {
    let llada = load_dir(&fixture("llada-tiny"), DType::F32, &Device::Cpu).unwrap();
    let c = &llada.config;
    assert_eq!(c.arch, Architecture::Llada);
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim
        ),
        (128, 32, 4, 2, 8)
    );
    assert_eq!((c.intermediate_size, c.num_layers), (64, 2));
    assert_eq!((c.rope_theta, c.norm_eps), (500000.0, 1e-5));
    assert_eq!((c.mask_token_id, c.pad_token_id), (Some(126), Some(120)));
    assert!(!c.tie_word_embeddings && !c.attention_bias && !c.o_proj_bias);

    let dream = load_dir(&fixture("dream-tiny"), DType::F32, &Device::Cpu).unwrap();
    let c = &dream.config;
    assert_eq!(c.arch, Architecture::Dream);
    assert_eq!((c.rope_theta, c.norm_eps), (1e6, 1e-6));
    assert_eq!((c.mask_token_id, c.pad_token_id), (Some(125), Some(120)));
    assert!(c.attention_bias && !c.o_proj_bias && !c.tie_word_embeddings);
}

/// Older spellings: `torch_dtype`, a top-level `rope_theta` only, and `model_type: "dream"`.
#[test]
fn older_config_spellings_are_read() {
    let dir = copy_model("dream-tiny");
    patch_config(
        dir.path(),
        &[
            ("dtype", None),
            ("torch_dtype", Some("float32".into())),
            ("rope_parameters", None),
            ("model_type", Some("dream".into())),
        ],
    );
    let m = load_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.config.arch, Architecture::Dream);
    assert_eq!(m.config.rope_theta, 1e6);
}

/// Under `weight_tying` LLaDA has no head tensor: the embedding serves as the head.
#[test]
fn tied_llada_reads_its_head_from_the_embedding() {
    let dir = copy_model("llada-tiny");
    patch_config(dir.path(), &[("weight_tying", Some(true.into()))]);
    patch_tensors(dir.path(), |t| {
        t.remove("model.transformer.ff_out.weight").unwrap();
    });
    let m = load_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let wte = m.weights.get("model.transformer.wte.weight").unwrap();
    assert_eq!(max_abs_diff(&m.model.lm_head().weight, wte), 0.0);
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let logits = m
        .model
        .forward(&ids, &AttentionMask::Bidirectional)
        .unwrap();
    assert_eq!(logits.dims(), [1, 3, 128]);
}

#[test]
fn unknown_model_types_list_the_served_ones() {
    for (model_type, want) in [
        (Some("mistral".into()), "model_type `mistral`"),
        (None, "no `model_type`"),
    ] {
        let dir = copy_model("llada-tiny");
        patch_config(dir.path(), &[("model_type", model_type)]);
        let e = load_err(dir.path());
        assert!(e.contains(want) && e.contains("config.json"), "{e}");
        for served in ["gpt2", "llama", "llada", "Dream"] {
            assert!(e.contains(served), "{e}");
        }
    }
}

#[test]
fn unimplemented_llada_and_dream_keys_are_refused_by_name() {
    let cases: [(&str, &str, serde_json::Value); 9] = [
        ("llada-tiny", "block_type", "sequential".into()),
        ("llada-tiny", "activation_type", "swiglu".into()),
        ("llada-tiny", "layer_norm_type", "default".into()),
        ("llada-tiny", "include_bias", true.into()),
        ("llada-tiny", "alibi", true.into()),
        ("llada-tiny", "block_group_size", 2.into()),
        ("llada-tiny", "rope", false.into()),
        ("dream-tiny", "use_sliding_window", true.into()),
        ("dream-tiny", "hidden_act", "gelu".into()),
    ];
    for (name, key, value) in cases {
        let dir = copy_model(name);
        patch_config(dir.path(), &[(key, Some(value))]);
        let e = load_err(dir.path());
        assert!(
            e.contains(&format!("`{key}`")) || e.contains("activation `gelu`"),
            "{name} {key}: {e}"
        );
        assert!(e.contains("config.json"), "{e}");
    }
    // A missing key the dataclass would default to something else is refused too.
    let dir = copy_model("llada-tiny");
    patch_config(dir.path(), &[("block_type", None)]);
    assert!(load_err(dir.path()).contains("`block_type`"));
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    for (name, tensor) in [
        ("llada-tiny", "model.transformer.blocks.1.ff_out.weight"),
        ("llada-tiny", "model.transformer.ff_out.weight"),
        ("dream-tiny", "model.layers.0.self_attn.q_proj.bias"),
        ("dream-tiny", "lm_head.weight"),
    ] {
        let dir = copy_model(name);
        patch_tensors(dir.path(), |t| {
            t.remove(tensor).unwrap();
        });
        let e = load_err(dir.path());
        assert!(
            e.contains(&format!("`{tensor}` is missing")) && e.contains("model.safetensors"),
            "{e}"
        );

        let dir = copy_model(name);
        patch_tensors(dir.path(), |t| {
            let wrong = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
            t.insert(tensor.to_string(), wrong);
        });
        let e = load_err(dir.path());
        assert!(
            e.contains(&format!("`{tensor}` has shape [3, 5]")) && e.contains("model.safetensors"),
            "{e}"
        );
    }
}

#[test]
fn a_mask_id_outside_the_vocabulary_is_refused() {
    for name in ["llada-tiny", "dream-tiny"] {
        let dir = copy_model(name);
        patch_config(dir.path(), &[("mask_token_id", Some(126336.into()))]);
        let e = load_err(dir.path());
        assert!(
            e.contains("`mask_token_id` 126336 is outside the vocabulary of 128")
                && e.contains("config.json"),
            "{e}"
        );
    }
}

#[test]
fn info_names_the_family_and_its_conventions() {
    for (name, arch, shift, mask) in [
        (
            "llada-tiny",
            "llada",
            "none: logits at i score token i",
            126,
        ),
        (
            "dream-tiny",
            "dream",
            "logits at i score token i+1, read as cat(logits[:, :1], logits[:, :-1])",
            125,
        ),
    ] {
        let out = dlm(["info", fixture(name).to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["architecture"], arch);
        assert_eq!(v["shift"], shift);
        assert_eq!(v["attention"], "bidirectional");
        assert_eq!(v["mask_token_id"], mask);
        assert_eq!(v["mask_token_from"], "config.json `mask_token_id`");
        assert_eq!(v["default_sampler"], arch);
        assert_eq!(v["dtype"], "float32");
    }
    // GPT-2 and LLaMA leave these to the run.
    let out = dlm(["info", fixture("llama-tiny").to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.get("shift").is_none());
}
