//! SmolLM2-135M-Instruct from its pinned GGUF (fetched by scripts/fetch-assets.sh) against the
//! fixture `smollm2-135m`: identical tokenisation, top-10 next-token ids as a set, last-position
//! logits within atol 5e-4 (fixtures/README §6), and identical 20-token greedy continuations
//! through `dlm convert` and the KV-cache decoder.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture};
use dlm::data::tokenizer::Tokenizer;
use dlm::model::load_dir;
use dlm::ops::AttentionMask;
use dlm::rng::Rng;
use dlm::sample::autoregressive::{generate, ArOptions};
use dlm::sample::filter::TokenChoice;

/// The GGUF converted once per test binary with `dlm convert`, into one fixed folder under
/// `target/tmp` that each run replaces: a static is never dropped, so a `TempDir` here would
/// leave 0.5 GB behind on every run.
fn converted() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smollm2-converted");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let gguf = common::smollm2_gguf();
        let (gguf, out) = (gguf.to_str().unwrap(), dir.to_str().unwrap());
        common::dlm(["convert", "--gguf", gguf, "--out", out]);
        dir
    })
}

struct Prompt {
    prompt: String,
    prompt_ids: Vec<u32>,
    top10_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

fn prompts() -> Vec<Prompt> {
    let g = common::golden_json("smollm2-135m");
    let ids = common::smollm2::ids;
    g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            prompt: p["prompt"].as_str().unwrap().to_string(),
            prompt_ids: ids(&p["prompt_ids"]),
            top10_ids: ids(&p["top10_ids"]),
            greedy_ids: ids(&p["greedy_ids"]),
        })
        .collect()
}

#[test]
fn tokenisation_matches() {
    let tok = Tokenizer::from_file(&converted().join("tokenizer.json")).unwrap();
    for p in prompts() {
        assert_eq!(
            tok.encode(&p.prompt).unwrap(),
            p.prompt_ids,
            "{:?}",
            p.prompt
        );
        assert_eq!(tok.decode(&p.prompt_ids).unwrap(), p.prompt);
    }
}

#[test]
fn last_logits_and_top10_match() {
    let m = load_dir(converted(), DType::F32, &Device::Cpu).unwrap();
    let golden = candle_core::safetensors::load(
        fixture("smollm2-135m").join("golden.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (i, p) in prompts().iter().enumerate() {
        let ids = Tensor::new(p.prompt_ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = m.model.hidden(&ids, &AttentionMask::Causal, None).unwrap();
        let last = m
            .model
            .head(&hidden.narrow(1, p.prompt_ids.len() - 1, 1).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_close(
            &format!("prompt {i} last logits"),
            &last,
            &golden["last_logits"].get(i).unwrap(),
            5e-4,
        );
        let v: Vec<f32> = last.to_vec1().unwrap();
        let mut order: Vec<u32> = (0..v.len() as u32).collect();
        order.sort_by(|&a, &b| v[b as usize].total_cmp(&v[a as usize]));
        let mut got: Vec<u32> = order[..10].to_vec();
        let mut want = p.top10_ids.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "prompt {i} top-10 set");
    }
}

#[test]
fn greedy_continuations_match() {
    let m = load_dir(converted(), DType::F32, &Device::Cpu).unwrap();
    let opts = ArOptions {
        max_new_tokens: 20,
        choice: TokenChoice::Greedy,
        stop_ids: vec![],
    };
    for (i, p) in prompts().iter().enumerate() {
        let out = generate(
            m.model.as_ref(),
            &p.prompt_ids,
            &opts,
            &mut Rng::seed(0),
            &Device::Cpu,
            |_| {},
        )
        .unwrap();
        assert_eq!(out, p.greedy_ids, "prompt {i} greedy continuation");
    }
}
