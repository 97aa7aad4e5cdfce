//! End-to-end training through the CLI on a tiny corpus: tokenizer → AR pre-training → adaptation,
//! and exact resume: N steps straight equal N/2 + stop + resume + N/2, also when the first run is
//! killed with SIGKILL mid-run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::training_data as data;
use common::{dlm, dlm_output, read_json, tiny_pretrain_args};

/// A tokenizer and a 10-step AR model, made once per test.
fn base(dir: &Path) -> PathBuf {
    let tok = common::train_tokenizer(dir);
    let run = dir.join("ar");
    let flags = ["--micro-batch", "2", "--max-steps", "10", "--lr", "3e-3"];
    dlm(tiny_pretrain_args(&tok, "ar", &run, &flags));
    run.join("checkpoints/step-00000010")
}

/// The flags the adapt and SFT runs here share: `steps` steps of 2 sequences of 32 tokens from
/// `data` at `lr` on `schedule`, a checkpoint every step, into `out`.
fn run_flags(data: &str, out: &Path, steps: &str, lr: &str, schedule: &str) -> Vec<String> {
    let out = out.to_str().unwrap();
    let pairs = [
        ["--data", data],
        ["--seq-len", "32"],
        ["--micro-batch", "2"],
        ["--max-steps", steps],
        ["--save-every", "1"],
        ["--lr", lr],
        ["--schedule", schedule],
        ["--out", out],
    ];
    let flags = pairs.iter().flatten().chain(&["--no-progress"]);
    flags.map(|s| s.to_string()).collect()
}

/// `dlm adapt` of `base` on the tiny corpus for `steps` steps, saving every step.
fn adapt_args(base: &Path, out: &Path, steps: &str, schedule: &str) -> Vec<String> {
    let base = base.to_str().unwrap();
    let own = [
        "adapt",
        "--base",
        base,
        "--anneal-steps",
        "4",
        "--shuffle-buffer",
        "8",
    ];
    let shared = run_flags(&data(), out, steps, "1e-3", schedule);
    own.map(String::from).into_iter().chain(shared).collect()
}

/// Sets the value that follows `flag` in `args`.
fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = value.into();
}

/// `dlm COMMAND --resume RUN`, to `max_steps` when given (else to the run's own).
fn resume(command: &str, run: &Path, max_steps: Option<&str>) {
    let mut args = vec![command, "--resume", run.to_str().unwrap(), "--no-progress"];
    if let Some(n) = max_steps {
        args.extend(["--max-steps", n]);
    }
    dlm(args);
}

fn final_files(run: &Path, step: u64) -> (Vec<u8>, Vec<u8>, String) {
    let dir = run.join(format!("checkpoints/step-{step:08}"));
    let state = read_json(&dir.join("trainer_state.json"));
    (
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        std::fs::read(dir.join("optimizer.safetensors")).unwrap(),
        format!("{}{}", state["rng"], state["loader"]),
    )
}

/// Asserts that two runs hold the same checkpoint at `step`: weights, optimizer moments, RNG and
/// loader state, byte for byte.
fn assert_same_checkpoint(a: &Path, b: &Path, step: u64, what: &str) {
    assert!(final_files(a, step) == final_files(b, step), "{what}");
}

/// The lines of kind `kind` in a run's metrics.jsonl.
fn metrics(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// The step of the run's latest checkpoint (the `checkpoints/latest` pointer), if any.
fn latest_step(run: &Path) -> Option<u64> {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).ok()?;
    Some(name.trim().trim_start_matches("step-").parse().unwrap())
}

#[test]
fn pretrain_then_adapt_then_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base(tmp.path());
    let straight = tmp.path().join("straight");
    dlm(adapt_args(&base, &straight, "8", "constant"));
    // The adapted checkpoint is a diffusion model directory with its mask id recorded.
    let cfg = read_json(&straight.join("checkpoints/step-00000008/config.json"));
    assert_eq!(cfg["mask_token_id"], 400);
    assert_eq!(metrics(&straight, "train").len(), 8);

    let halves = tmp.path().join("halves");
    dlm(adapt_args(&base, &halves, "4", "constant"));
    resume("adapt", &halves, Some("8"));
    assert_same_checkpoint(
        &straight,
        &halves,
        8,
        "4 + resume + 4 differs from 8 straight",
    );
}

/// Steps of the killed run: enough that the kill, sent once the first checkpoint is on disk,
/// lands well before the last step even on a loaded machine (a step with its checkpoint takes
/// about 80 ms, so the last one comes about 2 s after the first).
const KILLED_RUN_STEPS: u64 = 24;

#[test]
fn killed_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base(tmp.path());
    let steps = KILLED_RUN_STEPS.to_string();
    let straight = tmp.path().join("straight");
    dlm(adapt_args(&base, &straight, &steps, "cosine"));

    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(adapt_args(&base, &killed, &steps, "cosine"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while latest_step(&killed).is_none() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its first checkpoint"
        );
        assert!(Instant::now() < deadline, "no checkpoint within 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL, wherever it is
    child.wait().unwrap();
    let reached = latest_step(&killed).unwrap();
    println!("killed after step {reached} of {KILLED_RUN_STEPS}");
    assert!(
        reached < KILLED_RUN_STEPS,
        "the kill landed after the last step ({reached}): nothing was left to resume"
    );
    resume("adapt", &killed, None);
    assert_same_checkpoint(
        &straight,
        &killed,
        KILLED_RUN_STEPS,
        "killed + resumed run differs",
    );
}

#[test]
fn nonfinite_loss_stops_and_keeps_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base(tmp.path());
    let run = tmp.path().join("blowup");
    let mut args = adapt_args(&base, &run, "6", "constant");
    set_flag(&mut args, "--lr", "1e30"); // the first step throws the weights to ~1e30; the next loss is not finite
    let out = dlm_output(&args);
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
    let mut args = adapt_args(&base, &skip, "6", "constant");
    set_flag(&mut args, "--lr", "1e30");
    args.push("--skip-nonfinite".into());
    dlm(&args);
    assert!(!metrics(&skip, "skipped").is_empty());
}

/// `dlm sft` of `base` with a new mask token and rank-2 LoRA on the pairs in `data`.
fn sft_lora_args(base: &Path, data: &Path, out: &Path, steps: &str) -> Vec<String> {
    let (base, data) = (base.to_str().unwrap(), data.to_str().unwrap());
    let own = [
        "sft",
        "--base",
        base,
        "--mask-token",
        "new",
        "--lora-rank",
        "2",
        "--lora-alpha",
        "4",
    ];
    let shared = run_flags(data, out, steps, "1e-2", "constant");
    own.map(String::from).into_iter().chain(shared).collect()
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
    let straight = tmp.path().join("lora-straight");
    dlm(sft_lora_args(&base, &data, &straight, "4"));
    let halves = tmp.path().join("lora-halves");
    dlm(sft_lora_args(&base, &data, &halves, "2"));
    resume("sft", &halves, Some("4"));
    assert_same_checkpoint(
        &straight,
        &halves,
        4,
        "LoRA: 2 + resume + 2 differs from 4 straight",
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
        let moved = common::max_abs(&(w - &merged[name]).unwrap());
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
    let held_out = tmp.path().join("held_out.txt");
    std::fs::write(
        &held_out,
        "The held out text is never trained on. ".repeat(40),
    )
    .unwrap();
    let run = tmp.path().join("run");
    let mut args = adapt_args(&base, &run, "2", "constant");
    args.extend(["--val-every", "1", "--val-data", held_out.to_str().unwrap()].map(String::from));
    dlm(&args);
    resume("adapt", &run, Some("3"));
    let config = read_json(&run.join("run_config.json"));
    assert_eq!(config["val_data"][0], held_out.to_str().unwrap());
    let vals: Vec<f64> = metrics(&run, "val")
        .iter()
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
    let flags = [
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
    ];
    tiny_pretrain_args(tok, "diffusion", out, &flags)
}

fn train_losses(run: &Path) -> Vec<f64> {
    metrics(run, "train")
        .iter()
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
        dlm(pretrain_dtype_args(&tok, &out, steps, dtype));
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
    let config = read_json(&bf16_run.join("run_config.json"));
    assert_eq!(config["dtype"], "bf16");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let bytes = std::fs::read(bf16_run.join("checkpoints/step-00000006").join(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{file}: {name}");
        }
    }

    let halves = run("bf16-halves", "3", "bf16");
    resume("pretrain", &halves, Some("6"));
    assert_same_checkpoint(
        &bf16_run,
        &halves,
        6,
        "bf16: 3 + resume + 3 differs from 6 straight",
    );
}

/// `--dropout`: the same run with p = 0.1 trains on other losses than without (the masks change
/// the forward), records p in run_config.json, and still resumes exactly (the masks are drawn
/// from the run's seed, the step and the rank); a p outside [0, 1) is refused before anything
/// is written.
#[test]
fn dropout_changes_the_step_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::train_tokenizer(tmp.path());
    let run = |name: &str, steps: &str, dropout: &str| -> PathBuf {
        let out = tmp.path().join(name);
        let mut args = pretrain_dtype_args(&tok, &out, steps, "f32");
        args.extend(["--dropout".to_string(), dropout.to_string()]);
        dlm(args);
        out
    };
    let plain = run("plain", "6", "0");
    let dropped = run("dropout", "6", "0.1");
    let (a, b) = (train_losses(&plain), train_losses(&dropped));
    assert_eq!((a.len(), b.len()), (6, 6));
    // Step 1 starts from the same weights, data and noise: only the masks differ.
    assert_ne!(a[0], b[0], "dropout left the first step's loss unchanged");
    assert!(b.iter().all(|l| l.is_finite()));
    let config = read_json(&dropped.join("run_config.json"));
    assert!((config["dropout"].as_f64().unwrap() - 0.1).abs() < 1e-6);
    assert_eq!(read_json(&plain.join("run_config.json"))["dropout"], 0.0);

    // The LLaMA family takes it too (the same sites: embeddings, attention and MLP outputs).
    let llama = |name: &str, dropout: &str| -> Vec<f64> {
        let out = tmp.path().join(name);
        let mut args = pretrain_dtype_args(&tok, &out, "1", "f32");
        let arch = args.iter().position(|a| a == "gpt2").unwrap();
        args[arch] = "llama".into();
        args.extend(["--dropout".to_string(), dropout.to_string()]);
        dlm(args);
        train_losses(&out)
    };
    assert_ne!(llama("llama-plain", "0"), llama("llama-dropout", "0.1"));

    let halves = run("dropout-halves", "3", "0.1");
    resume("pretrain", &halves, Some("6"));
    assert_same_checkpoint(
        &dropped,
        &halves,
        6,
        "dropout: 3 + resume + 3 differs from 6 straight",
    );

    let refused = tmp.path().join("refused");
    let mut args = pretrain_dtype_args(&tok, &refused, "2", "f32");
    args.extend(["--dropout".to_string(), "1".to_string()]);
    let out = dlm_output(args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dropout 1 is not a probability"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !refused.exists(),
        "a refused run wrote {}",
        refused.display()
    );
}
