//! `--device cuda` on every command `scripts/gpu-check.sh` runs: a build without the `cuda`
//! feature refuses it with one clear error (exit 1) that says how to get a CUDA build, rather than
//! running on the CPU or panicking.

#![cfg(not(feature = "cuda"))]

mod common;

use common::*;

fn assert_refused(args: &[&str]) {
    let err = dlm_fails(args.iter().chain(&["--device", "cuda"]));
    assert!(
        err.contains("cannot open cuda") && err.contains("--features cuda"),
        "dlm {args:?} --device cuda: {err}"
    );
    assert_eq!(
        err.lines().count(),
        1,
        "dlm {args:?}: one error line: {err}"
    );
}

#[test]
fn cuda_is_refused_clearly_without_the_cuda_feature() {
    let tiny = fixture("llama-tiny");
    let tiny = tiny.to_str().unwrap();
    let builtin = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/dlm-shakespeare-12m");
    let tmp = tempfile::tempdir().unwrap();
    let tok = train_tokenizer(tmp.path());
    let adapt_out = tmp.path().join("adapt").to_str().unwrap().to_owned();
    let data = training_data();
    let train = ["--seq-len", "32", "--max-steps", "1", "--no-progress"];
    // `ar` is pretrain's default objective.
    let pretrain = tiny_pretrain_args(
        &tok,
        "ar",
        tmp.path().join("pretrain").as_path(),
        &["--max-steps", "1"],
    );
    let pretrain_args: Vec<&str> = pretrain.iter().map(String::as_str).collect();
    let adapt_args: Vec<&str> = [
        "adapt", "--base", builtin, "--data", &data, "--out", &adapt_out,
    ]
    .into_iter()
    .chain(train)
    .collect();
    for args in [
        &["score", tiny, "--ids", "1,2,3", "--attention", "causal"][..],
        &[
            "generate",
            tiny,
            "--prompt-ids",
            "1",
            "--length",
            "3",
            "--mask-id",
            "7",
        ],
        &["bench", "forward", tiny, "--seq", "8"],
        &[
            "bench",
            "sample",
            tiny,
            "--length",
            "8",
            "--steps",
            "2",
            "--mask-id",
            "7",
        ],
        &[
            "bench", "train", "--config", "tiny", "--seq", "16", "--steps", "1",
        ],
        &pretrain_args,
        &adapt_args,
    ] {
        assert_refused(args);
    }
    // Refused before the run directories are written: nothing is left to clean up.
    for run in ["pretrain", "adapt"] {
        assert!(
            !tmp.path().join(run).join("run_config.json").exists(),
            "{run} wrote its run directory before refusing the device"
        );
    }
}
