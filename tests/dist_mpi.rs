//! Data-parallel training. With the `mpi` feature (CI: `cargo test --features mpi --test
//! dist_mpi`, which needs OpenMPI's mpirun): 2 ranks with micro-batch b end with the same
//! parameters and AdamW moments as 1 rank with micro-batch 2b, for the diffusion and the AR
//! objective, replicated (with and without clipping) and with ZeRO-1, launched by `mpirun` or by
//! `--world-size 2`; and runs resume under a different world size. Without it: `--world-size 2` is a clear error.

use std::path::Path;

mod common;

/// `dlm pretrain` of a tiny GPT-2 with `objective` for `steps` steps of seq-len 32, saving every
/// step.
fn pretrain_args(
    tok: &Path,
    objective: &str,
    out: &Path,
    micro_batch: &str,
    steps: &str,
) -> Vec<String> {
    let flags = [
        "--micro-batch",
        micro_batch,
        "--max-steps",
        steps,
        "--save-every",
        "1",
        "--lr",
        "1e-3",
        "--schedule",
        "constant",
        "--shuffle-buffer",
        "16",
    ];
    common::tiny_pretrain_args(tok, objective, out, &flags)
}

#[cfg(not(feature = "mpi"))]
#[test]
fn world_size_needs_the_mpi_feature() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::train_tokenizer(tmp.path());
    let mut args = pretrain_args(&tok, "ar", &tmp.path().join("run"), "2", "3");
    args.extend(["--world-size".into(), "2".into()]);
    let out = common::dlm_output(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`mpi` feature"), "{stderr}");
    assert!(
        !tmp.path().join("run").exists(),
        "nothing may run before the relaunch"
    );
}

#[cfg(feature = "mpi")]
mod under_mpirun {
    use super::*;
    use crate::common::{dlm, max_abs_diff};
    use std::path::PathBuf;
    use std::process::{Command, Output};

    fn run(cmd: &mut Command) -> Output {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn tensors(run: &Path, step: u64, file: &str) -> Vec<(String, candle_core::Tensor)> {
        let path = run.join(format!("checkpoints/step-{step:08}/{file}"));
        let mut t: Vec<_> = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    }

    /// Max |a − b| over every parameter and AdamW moment of two runs' checkpoints at `step`.
    fn max_diff(a: &Path, b: &Path, step: u64) -> f32 {
        let mut worst = 0.0f32;
        for file in ["model.safetensors", "optimizer.safetensors"] {
            let (ta, tb) = (tensors(a, step, file), tensors(b, step, file));
            assert_eq!(ta.len(), tb.len(), "{file}: tensor count");
            for ((na, x), (nb, y)) in ta.iter().zip(&tb) {
                assert_eq!(na, nb);
                worst = worst.max(max_abs_diff(x, y));
            }
        }
        worst
    }

    /// Float tolerance between 2 ranks × b and 1 rank × 2b after 3 AdamW steps: the batched matmuls
    /// and the reductions round differently.
    const TOL: f32 = 1e-4;

    fn mpirun(args: &[String]) -> Output {
        run(Command::new("mpirun")
            .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
            .arg(env!("CARGO_BIN_EXE_dlm"))
            .args(args))
    }

    fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    #[test]
    fn two_ranks_equal_one_rank_with_twice_the_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let tok = common::train_tokenizer(tmp.path());
        let dir = |name: &str| -> PathBuf { tmp.path().join(name) };
        for objective in ["diffusion", "ar"] {
            let one = dir(&format!("{objective}-one"));
            dlm(pretrain_args(&tok, objective, &one, "4", "3"));
            // Launched by mpirun, replicated AdamW.
            let two = dir(&format!("{objective}-two"));
            mpirun(&pretrain_args(&tok, objective, &two, "2", "3"));
            // Relaunched by dlm itself, ZeRO-1.
            let zero = dir(&format!("{objective}-zero"));
            let args = with(
                pretrain_args(&tok, objective, &zero, "2", "3"),
                &["--world-size", "2", "--zero", "1"],
            );
            dlm(&args);
            // Without clipping, replicated AdamW updates each bucket as its sum arrives.
            let no_clip = ["--max-grad-norm", "0"];
            let one_nc = dir(&format!("{objective}-one-noclip"));
            dlm(with(
                pretrain_args(&tok, objective, &one_nc, "4", "3"),
                &no_clip,
            ));
            let two_nc = dir(&format!("{objective}-two-noclip"));
            mpirun(&with(
                pretrain_args(&tok, objective, &two_nc, "2", "3"),
                &no_clip,
            ));
            for (name, one, run) in [
                ("replicated", &one, &two),
                ("zero-1", &one, &zero),
                ("replicated, no clipping", &one_nc, &two_nc),
            ] {
                for step in 1..=3 {
                    let d = max_diff(one, run, step);
                    eprintln!("{objective} {name} step {step}: max |Δ| = {d:.3e} (tol {TOL:.0e})");
                    assert!(d <= TOL, "{objective} {name} step {step}: {d}");
                }
            }
            // Only rank 0 logs: one train line per step.
            let log = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
            assert_eq!(log.matches("\"kind\":\"train\"").count(), 3, "{log}");
        }
    }

    #[test]
    fn checkpoints_resume_under_another_world_size() {
        let tmp = tempfile::tempdir().unwrap();
        let tok = common::train_tokenizer(tmp.path());
        let straight = tmp.path().join("straight");
        dlm(pretrain_args(&tok, "diffusion", &straight, "4", "3"));
        let resume = |run: &Path, extra: &[&str]| {
            let args = with(
                vec![
                    "pretrain".into(),
                    "--resume".into(),
                    run.display().to_string(),
                ],
                &[&["--max-steps", "3", "--no-progress"][..], extra].concat(),
            );
            dlm(&args);
        };

        // 2 ranks (ZeRO-1) for 2 steps, then 1 rank with the same global batch.
        let down = tmp.path().join("down");
        let first = with(
            pretrain_args(&tok, "diffusion", &down, "2", "2"),
            &["--world-size", "2", "--zero", "1"],
        );
        dlm(&first);
        resume(&down, &["--micro-batch", "4"]);
        let d = max_diff(&straight, &down, 3);
        assert!(d <= TOL, "2 ranks then 1: {d}");

        // 1 rank for 2 steps, then 2 ranks (replicated).
        let up = tmp.path().join("up");
        dlm(pretrain_args(&tok, "diffusion", &up, "4", "2"));
        resume(&up, &["--world-size", "2", "--micro-batch", "2"]);
        let d = max_diff(&straight, &up, 3);
        assert!(d <= TOL, "1 rank then 2: {d}");
    }
}
