//! Shared helpers for the tests: fixture and asset paths, the CLI binary, tensor comparison, the
//! tiny training corpus.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};

pub mod gguf;
pub mod smollm2;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fetched asset under the cache `scripts/fetch-assets.sh` fills (`$DLM_ASSETS`, else
/// `~/.cache/dlm-assets`, as the CLI reads it); panics with the command that fetches `group` when
/// it is absent.
pub fn asset(rel: &str, group: &str) -> PathBuf {
    let p = dlm::eval::tasks::default_assets_dir().join(rel);
    assert!(
        p.is_file(),
        "{} is missing: run `scripts/fetch-assets.sh {group}` (set DLM_ASSETS to use another cache)",
        p.display()
    );
    p
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF (asset group `smollm2`).
pub fn smollm2_gguf() -> PathBuf {
    asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")
}

/// Runs the CLI binary under test with `args` to its end, whatever its exit status.
pub fn dlm_output<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the CLI binary under test with `args` to its end: exit code (-1 when killed by a signal),
/// stdout and stderr as text.
pub fn dlm_run<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> (i32, String, String) {
    let out = dlm_output(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the CLI binary under test with `args`, which must fail as a refused input does (exit
/// code 1); its stderr.
pub fn dlm_fails<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let (code, _, stderr) = dlm_run(&args);
    assert_eq!(code, 1, "dlm {args:?}: {stderr}");
    stderr
}

/// Runs the CLI binary under test with `args`, which must succeed; its output.
pub fn dlm<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = dlm_output(&args);
    assert!(
        out.status.success(),
        "dlm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A JSON file, parsed.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub const TINY: [&str; 3] = ["gpt2-tiny", "llama-tiny", "llama-tiny-tied"];

/// The golden tensors of a tiny fixture.
pub fn golden(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu)
        .expect("golden.safetensors")
}

pub fn golden_json(name: &str) -> serde_json::Value {
    read_json(&fixture(name).join("golden.json"))
}

/// Max |t| over all entries, after a cast to f32.
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Max |a − b| over all entries, after both are cast to f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    max_abs(&(a - b).unwrap())
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
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"});
    std::fs::write(out.join("tokenizer_config.json"), chat.to_string()).unwrap();
    out
}

/// The tiny training corpus (files under tests/fixtures/data).
pub fn training_data() -> String {
    format!("{}/tests/fixtures/data", env!("CARGO_MANIFEST_DIR"))
}

/// A 400-token byte-level BPE trained on the tiny corpus with `dlm tokenizer train`: DIR/tok.json.
pub fn train_tokenizer(dir: &Path) -> PathBuf {
    let tok = dir.join("tok.json");
    let (data, out) = (training_data(), tok.to_str().unwrap());
    dlm([
        "tokenizer",
        "train",
        "--vocab-size",
        "400",
        "--data",
        &data,
        "--out",
        out,
    ]);
    tok
}

/// `dlm pretrain` of the tiny GPT-2 config with `objective` on the tiny corpus, sequences of 32
/// tokens, without a progress bar, into `out`; `flags` add the rest (steps, batch, lr, ...).
pub fn tiny_pretrain_args(tok: &Path, objective: &str, out: &Path, flags: &[&str]) -> Vec<String> {
    let fixed = [
        "pretrain",
        "--arch",
        "gpt2",
        "--config",
        "tiny",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--objective",
        objective,
        "--data",
        &training_data(),
        "--seq-len",
        "32",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ];
    fixed.iter().chain(flags).map(|s| s.to_string()).collect()
}
