//! Checkpoint layouts: save/load round trips (f32, bf16), sharded safetensors, the released
//! DiffuGPT key layout, and the diffusion mask token (reused or new row).

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use dlm::model::mask_token::{add_mask_token, reuse_mask_token};
use dlm::model::{load_dir, LoadedModel};
use dlm::ops::AttentionMask;
use dlm::rng::Rng;

fn bidirectional_logits(m: &LoadedModel, name: &str) -> Tensor {
    let ids = ids_u32(&golden(name)["input_ids"]);
    m.model
        .forward(&ids, &AttentionMask::Bidirectional)
        .unwrap()
}

fn load(dir: &Path) -> LoadedModel {
    load_dir(dir, DType::F32, &Device::Cpu).unwrap()
}

/// Writes fixture `name`'s weights in another layout (`write` gets them and a directory holding
/// the fixture's config.json) and asserts the directory loads to the fixture's logits exactly.
fn assert_layout_loads(name: &str, what: &str, write: impl FnOnce(HashMap<String, Tensor>, &Path)) {
    let m = load(&fixture(name));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture(name).join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let all = candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu)
        .unwrap();
    write(all, dir.path());
    assert_close(
        what,
        &bidirectional_logits(&load(dir.path()), name),
        &bidirectional_logits(&m, name),
        0.0,
    );
}

#[test]
fn save_and_reload_round_trips() {
    for name in TINY {
        let m = load(&fixture(name));
        let want = bidirectional_logits(&m, name);
        let out = tempfile::tempdir().unwrap();
        m.weights
            .save_dir(out.path(), &m.config, DType::F32)
            .unwrap();
        let back = load(out.path());
        assert_close(
            &format!("{name} f32 round trip"),
            &bidirectional_logits(&back, name),
            &want,
            0.0,
        );
        // Tied models store the shared matrix once, as HF does.
        let keys =
            candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        assert_eq!(
            keys.contains_key("lm_head.weight"),
            !m.config.tie_word_embeddings
        );
        m.weights
            .save_dir(out.path(), &m.config, DType::BF16)
            .unwrap();
        let cfg = read_json(&out.path().join("config.json"));
        assert_eq!(cfg["torch_dtype"], "bfloat16");
        let back = load(out.path());
        assert_close(
            &format!("{name} bf16 round trip"),
            &bidirectional_logits(&back, name),
            &want,
            0.1,
        );
    }
}

#[test]
fn sharded_checkpoint_loads() {
    assert_layout_loads("llama-tiny", "sharded", |all, dir| {
        let (mut a, mut b) = (HashMap::new(), HashMap::new());
        let mut weight_map = serde_json::Map::new();
        for (i, (k, v)) in all.into_iter().enumerate() {
            let shard = if i % 2 == 0 {
                "model-00001-of-00002.safetensors"
            } else {
                "model-00002-of-00002.safetensors"
            };
            weight_map.insert(k.clone(), shard.into());
            if i % 2 == 0 {
                a.insert(k, v)
            } else {
                b.insert(k, v)
            };
        }
        candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
        candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    });
}

#[test]
fn diffugpt_layout_loads() {
    assert_layout_loads("gpt2-tiny", "diffugpt layout", |all, dir| {
        let mut renamed = HashMap::new();
        for (k, v) in all {
            let k = match k.as_str() {
                "transformer.wte.weight" => {
                    renamed.insert("lm_head.weight".to_string(), v.clone());
                    "embed_tokens.weight".to_string()
                }
                other => other.replace("transformer.", "denoise_model."),
            };
            renamed.insert(k, v);
        }
        candle_core::safetensors::save(&renamed, dir.join("model.safetensors")).unwrap();
    });
}

#[test]
fn mask_token_reused_or_added() {
    for name in TINY {
        let mut m = load(&fixture(name));
        let mut cfg = m.config.clone();
        assert!(reuse_mask_token(&mut cfg, 96).is_err());
        reuse_mask_token(&mut cfg, 7).unwrap();
        assert_eq!(cfg.mask_token_id, Some(7));

        let mut cfg = m.config.clone();
        let id = add_mask_token(&mut cfg, &mut m.weights, &mut Rng::seed(0)).unwrap();
        assert_eq!((id, cfg.vocab_size, cfg.mask_token_id), (96, 97, Some(96)));
        let out = tempfile::tempdir().unwrap();
        m.weights.save_dir(out.path(), &cfg, DType::F32).unwrap();
        let grown = load(out.path());
        assert_eq!(grown.config.mask_token_id, Some(96));
        assert_eq!(grown.config.vocab_size, 97);
        // The new row is the mean of the old rows plus noise of std 1/sqrt(D).
        let embed = grown
            .weights
            .iter()
            .find(|(k, _)| k.ends_with("wte.weight") || k.ends_with("embed_tokens.weight"))
            .unwrap()
            .1;
        let mean = embed.narrow(0, 0, 96).unwrap().mean_keepdim(0).unwrap();
        let row = embed.narrow(0, 96, 1).unwrap();
        let noise_std = (row - mean)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        let d = embed.dim(1).unwrap() as f32;
        assert!(
            (noise_std - 1.0 / d.sqrt()).abs() < 0.5 / d.sqrt(),
            "noise std {noise_std}"
        );
        // Old logits are unchanged for every old token.
        let ids = ids_u32(&golden(name)["input_ids"]);
        let logits = grown
            .model
            .forward(&ids, &AttentionMask::Causal)
            .unwrap()
            .narrow(2, 0, 96)
            .unwrap();
        assert_close(
            &format!("{name} grown vocab"),
            &logits,
            &golden(name)["logits_causal"],
            1e-5,
        );
    }
}

#[test]
fn convert_restores_a_model_directory_in_f16() {
    for name in TINY {
        let out = tempfile::tempdir().unwrap();
        let (model, dir) = (fixture(name), out.path());
        let (model, dir) = (model.to_str().unwrap(), dir.to_str().unwrap());
        dlm(["convert", "--model", model, "--out", dir, "--dtype", "f16"]);
        let cfg = read_json(&out.path().join("config.json"));
        assert_eq!(cfg["torch_dtype"], "float16");
        let want = bidirectional_logits(&load(&fixture(name)), name);
        // f16 storage: about 3 decimal digits per weight.
        assert_close(
            &format!("{name} f16 convert"),
            &bidirectional_logits(&load(out.path()), name),
            &want,
            0.05,
        );
    }
    // Neither source: a usage error, not a panic.
    let out = dlm_output(["convert", "--out", "/tmp/nowhere"]);
    assert_eq!(out.status.code(), Some(2));
}
