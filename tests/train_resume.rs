//! End-to-end training through the CLI on a tiny corpus: tokenizer → AR pre-training → adaptation,
//! and exact resume: N steps straight equal N/2 + stop + resume + N/2, also when the first run is
//! killed with SIGKILL mid-run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

fn dlm(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dlm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

use common::training_data as data;

/// A tokenizer and a 10-step AR model, made once per test.
fn base(dir: &Path) -> PathBuf {
    let tok = common::train_tokenizer(dir);
    let run = dir.join("ar");
    dlm(&[
        "pretrain",
        "--arch",
        "gpt2",
        "--config",
        "tiny",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--objective",
        "ar",
        "--data",
        &data(),
        "--seq-len",
        "32",
        "--micro-batch",
        "2",
        "--max-steps",
        "10",
        "--lr",
        "3e-3",
        "--no-progress",
        "--out",
        run.to_str().unwrap(),
    ]);
    run.join("checkpoints/step-00000010")
}

fn adapt_args<'a>(base: &'a str, out: &'a str, steps: &'a str, schedule: &'a str) -> Vec<&'a str> {
    vec![
        "adapt",
        "--base",
        base,
        "--data",
        "DATA",
        "--seq-len",
        "32",
        "--micro-batch",
        "2",
        "--max-steps",
        steps,
        "--anneal-steps",
        "4",
        "--schedule",
        schedule,
        "--save-every",
        "1",
        "--lr",
        "1e-3",
        "--shuffle-buffer",
        "8",
        "--no-progress",
        "--out",
        out,
    ]
}

fn with_data(args: Vec<&str>, data: &str) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            if a == "DATA" {
                data.to_string()
            } else {
                a.to_string()
            }
        })
        .collect()
}

fn final_files(run: &Path, step: u64) -> (Vec<u8>, Vec<u8>, String) {
    let dir = run.join(format!("checkpoints/step-{step:08}"));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json")).unwrap())
            .unwrap();
    (
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        std::fs::read(dir.join("optimizer.safetensors")).unwrap(),
        format!("{}{}", state["rng"], state["loader"]),
    )
}

#[test]
fn pretrain_then_adapt_then_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base(tmp.path());
    let (b, d) = (base.to_str().unwrap().to_string(), data());
    let straight = tmp.path().join("straight");
    let args = with_data(
        adapt_args(&b, straight.to_str().unwrap(), "8", "constant"),
        &d,
    );
    dlm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // The adapted checkpoint is a diffusion model directory with its mask id recorded.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(straight.join("checkpoints/step-00000008/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["mask_token_id"], 400);
    let lines = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
    assert_eq!(
        lines
            .lines()
            .filter(|l| l.contains("\"kind\":\"train\""))
            .count(),
        8
    );

    let halves = tmp.path().join("halves");
    let args = with_data(
        adapt_args(&b, halves.to_str().unwrap(), "4", "constant"),
        &d,
    );
    dlm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    dlm(&[
        "adapt",
        "--resume",
        halves.to_str().unwrap(),
        "--max-steps",
        "8",
        "--no-progress",
    ]);
    assert!(
        final_files(&straight, 8) == final_files(&halves, 8),
        "4 + resume + 4 differs from 8 straight"
    );
}

#[test]
fn killed_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base(tmp.path());
    let (b, d) = (base.to_str().unwrap().to_string(), data());
    let straight = tmp.path().join("straight");
    let args = with_data(
        adapt_args(&b, straight.to_str().unwrap(), "12", "cosine"),
        &d,
    );
    dlm(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let killed = tmp.path().join("killed");
    let args = with_data(adapt_args(&b, killed.to_str().unwrap(), "12", "cosine"), &d);
    let mut child = Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(&args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let latest = killed.join("checkpoints/latest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !latest.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL, wherever it is
    child.wait().unwrap();
    dlm(&[
        "adapt",
        "--resume",
        killed.to_str().unwrap(),
        "--no-progress",
    ]);
    assert!(
        final_files(&straight, 12) == final_files(&killed, 12),
        "killed + resumed run differs"
    );
}

#[test]
fn nonfinite_loss_stops_and_keeps_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base(tmp.path());
    let (b, d) = (base.to_str().unwrap().to_string(), data());
    let run = tmp.path().join("blowup");
    let mut args = with_data(adapt_args(&b, run.to_str().unwrap(), "6", "constant"), &d);
    let lr = args.iter().position(|a| a == "--lr").unwrap();
    args[lr + 1] = "1e30".into(); // the first step throws the weights to ~1e30; the next loss is not finite
    let out = Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("non-finite") && stderr.contains("Last good checkpoint"),
        "{stderr}"
    );
    assert!(run
        .join("checkpoints/step-00000001/model.safetensors")
        .exists());

    let skip = tmp.path().join("skip");
    let mut args = with_data(adapt_args(&b, skip.to_str().unwrap(), "6", "constant"), &d);
    args[lr + 1] = "1e30".into();
    args.push("--skip-nonfinite".into());
    dlm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let log = std::fs::read_to_string(skip.join("metrics.jsonl")).unwrap();
    assert!(log.contains("\"kind\":\"skipped\""));
}

fn sft_lora_args<'a>(base: &'a str, data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "sft",
        "--base",
        base,
        "--mask-token",
        "new",
        "--lora-rank",
        "2",
        "--lora-alpha",
        "4",
        "--data",
        data,
        "--seq-len",
        "32",
        "--micro-batch",
        "2",
        "--max-steps",
        steps,
        "--save-every",
        "1",
        "--lr",
        "1e-2",
        "--schedule",
        "constant",
        "--no-progress",
        "--out",
        out,
    ]
}

#[test]
fn sft_with_lora_trains_only_the_adapters_merges_them_and_resumes_exactly() {
    use candle_core::{DType, Device};
    use dlm::model::weights::read_safetensors;
    let tmp = tempfile::tempdir().unwrap();
    let base = base(tmp.path());
    let pairs: String = (0..24)
        .map(|i| {
            format!(
                "{{\"prompt\": \"What is {i} plus one?\", \"response\": \"It is {} now.\"}}\n",
                i + 1
            )
        })
        .collect();
    let data = tmp.path().join("pairs.jsonl");
    std::fs::write(&data, pairs).unwrap();
    let (b, d) = (base.to_str().unwrap(), data.to_str().unwrap());
    let straight = tmp.path().join("lora-straight");
    dlm(&sft_lora_args(b, d, straight.to_str().unwrap(), "4"));
    let halves = tmp.path().join("lora-halves");
    dlm(&sft_lora_args(b, d, halves.to_str().unwrap(), "2"));
    dlm(&[
        "sft",
        "--resume",
        halves.to_str().unwrap(),
        "--max-steps",
        "4",
        "--no-progress",
    ]);
    assert!(
        final_files(&straight, 4) == final_files(&halves, 4),
        "LoRA: 2 + resume + 2 differs from 4 straight"
    );

    // The checkpoint holds the merged model: block linears moved, everything else is the base.
    let read = |p: PathBuf| -> std::collections::BTreeMap<String, candle_core::Tensor> {
        read_safetensors(&p, DType::F32, &Device::Cpu, |_| true)
            .unwrap()
            .into_iter()
            .collect()
    };
    let frozen = read(straight.join("lora-base.safetensors"));
    let merged = read(straight.join("checkpoints/step-00000004/model.safetensors"));
    let factors = read(straight.join("checkpoints/step-00000004/adapter.safetensors"));
    let mut adapted = 0;
    for (name, w) in &frozen {
        let moved = (w - &merged[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let stem = name.trim_end_matches(".weight");
        if factors.contains_key(&format!("{stem}.lora_A.weight")) {
            assert!(moved > 0.0, "{name}: the adapter did not move it");
            adapted += 1;
        } else {
            assert_eq!(moved, 0.0, "{name}: frozen, yet changed");
        }
    }
    // gpt2 tiny: 2 layers × (c_attn, attn.c_proj, c_fc, mlp.c_proj).
    assert_eq!(adapted, 8);
    // The optimizer state covers the factors only.
    let moments = read(straight.join("checkpoints/step-00000004/optimizer.safetensors"));
    assert!(
        moments.keys().all(|k| k.contains("lora_")),
        "{:?}",
        moments.keys()
    );
}

#[test]
fn val_data_validates_on_separate_text_and_is_kept_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base(tmp.path());
    let (b, d) = (base.to_str().unwrap().to_string(), data());
    let held_out = tmp.path().join("held_out.txt");
    std::fs::write(
        &held_out,
        "The held out text is never trained on. ".repeat(40),
    )
    .unwrap();
    let run = tmp.path().join("run");
    let mut args = with_data(adapt_args(&b, run.to_str().unwrap(), "2", "constant"), &d);
    args.extend(["--val-every", "1", "--val-data", held_out.to_str().unwrap()].map(String::from));
    dlm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    dlm(&[
        "adapt",
        "--resume",
        run.to_str().unwrap(),
        "--max-steps",
        "3",
        "--no-progress",
    ]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["val_data"][0], held_out.to_str().unwrap());
    let vals: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "val")
        .map(|v| v["val_loss"].as_f64().unwrap())
        .collect();
    assert_eq!(
        vals.len(),
        3,
        "one validation per step, the resumed step included"
    );
    assert!(vals.iter().all(|v| v.is_finite() && *v > 0.0), "{vals:?}");
}

/// `dlm pretrain` of a tiny GPT-2 (diffusion objective) for `steps` steps in `dtype`.
fn pretrain_dtype_args(tok: &Path, out: &Path, steps: &str, dtype: &str) -> Vec<String> {
    [
        "pretrain",
        "--arch",
        "gpt2",
        "--config",
        "tiny",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--objective",
        "diffusion",
        "--data",
        &data(),
        "--seq-len",
        "32",
        "--micro-batch",
        "4",
        "--max-steps",
        steps,
        "--save-every",
        "1",
        "--lr",
        "3e-3",
        "--schedule",
        "constant",
        "--shuffle-buffer",
        "8",
        "--dtype",
        dtype,
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn train_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// bf16 compute with f32 masters: the losses track the f32 run's (same data, noise and initial
/// weights) within `BF16_LOSS_RTOL`, a loose bound for 8-bit mantissas compounding over steps;
/// the checkpoints hold f32 tensors; and a resumed bf16 run equals a straight one exactly.
#[test]
fn bf16_training_tracks_f32_and_resumes_exactly() {
    const BF16_LOSS_RTOL: f64 = 5e-3;
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::train_tokenizer(tmp.path());
    let run = |name: &str, steps: &str, dtype: &str| -> PathBuf {
        let out = tmp.path().join(name);
        let args = pretrain_dtype_args(&tok, &out, steps, dtype);
        dlm(&args.iter().map(String::as_str).collect::<Vec<_>>());
        out
    };
    let f32_run = run("f32", "6", "f32");
    let bf16_run = run("bf16", "6", "bf16");
    let (a, b) = (train_losses(&f32_run), train_losses(&bf16_run));
    assert_eq!((a.len(), b.len()), (6, 6));
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        let rel = (x - y).abs() / x;
        println!(
            "step {}: f32 loss {x:.5}, bf16 {y:.5}, relative Δ {rel:.2e}",
            step + 1
        );
        assert!(rel <= BF16_LOSS_RTOL, "step {}: {x} vs {y}", step + 1);
    }
    assert_ne!(a, b, "bf16 compute must differ from f32 in rounding");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf16_run.join("run_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["dtype"], "bf16");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let bytes = std::fs::read(bf16_run.join("checkpoints/step-00000006").join(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{file}: {name}");
        }
    }

    let halves = run("bf16-halves", "3", "bf16");
    dlm(&[
        "pretrain",
        "--resume",
        halves.to_str().unwrap(),
        "--max-steps",
        "6",
        "--no-progress",
    ]);
    assert!(
        final_files(&bf16_run, 6) == final_files(&halves, 6),
        "bf16: 3 + resume + 3 differs from 6 straight"
    );
}
