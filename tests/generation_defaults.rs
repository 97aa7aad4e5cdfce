//! A model directory's generation_config.json sets what `dlm generate`, `dlm infill` and
//! `dlm serve` use for the settings a user leaves out; flags win; naming another sampler drops the
//! defaults' token-choice settings; a broken file is a clear error.

mod common;

use common::*;
use serde_json::{json, Value};

fn generate(dir: &str, extra: &[&str]) -> Value {
    let mut args = vec!["generate", dir, "--prompt", "the", "--json"];
    args.extend(extra);
    let out = dlm(&args);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_models_defaults_fill_what_the_flags_leave_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_dlm_dir(tmp.path());
    let d = dir.to_str().unwrap();
    let plain = generate(d, &[]);
    // dlm's own defaults: 64 positions, 64 steps, argmax top-k confidence.
    assert_eq!(
        (
            plain["ids"].as_array().unwrap().len(),
            plain["steps"].as_u64()
        ),
        (64, Some(64))
    );
    std::fs::write(
        dir.join("generation_config.json"),
        json!({"bos_token_id": 0, "sampler": "random-keep", "temperature": 0.8, "top_p": 0.9,
               "steps": 6, "max_new_tokens": 10})
        .to_string(),
    )
    .unwrap();
    let info: Value = serde_json::from_slice(&dlm(["info", d, "--json"]).stdout).unwrap();
    assert_eq!(
        info["generation_defaults"]["sampler"], "random-keep",
        "{info}"
    );
    let sampled = generate(d, &[]);
    assert_eq!(sampled["ids"].as_array().unwrap().len(), 10, "{sampled}");
    // random-keep runs as many forwards as it needs, at most the steps.
    assert!(sampled["steps"].as_u64().unwrap() <= 6, "{sampled}");
    // The same as the flags spelled out.
    let spelled = generate(
        d,
        &[
            "--sampler",
            "random-keep",
            "--temperature",
            "0.8",
            "--top-p",
            "0.9",
            "--steps",
            "6",
            "--length",
            "10",
        ],
    );
    assert_eq!(sampled["ids"], spelled["ids"]);
    // Flags win over the defaults.
    let longer = generate(
        d,
        &["--length", "12", "--steps", "12", "--temperature", "0"],
    );
    assert_eq!(longer["ids"].as_array().unwrap().len(), 12);
    // The reference sampler by flag: the defaults' top_p (which it refuses) is not carried over;
    // steps and length are.
    let reference = generate(d, &["--sampler", "topk-confidence"]);
    assert_eq!(
        (
            reference["ids"].as_array().unwrap().len(),
            reference["steps"].as_u64()
        ),
        (10, Some(6))
    );
    let argmax = generate(
        d,
        &[
            "--sampler",
            "topk-confidence",
            "--steps",
            "6",
            "--length",
            "10",
            "--temperature",
            "0",
        ],
    );
    assert_eq!(reference["ids"], argmax["ids"]);
    // infill takes the defaults too (steps here).
    let out = dlm([
        "infill", d, "--prefix", "the", "--suffix", "the", "--length", "8", "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["steps"].as_u64().unwrap() <= 6, "{v}");
}

#[test]
fn a_broken_generation_config_names_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_dlm_dir(tmp.path());
    let d = dir.to_str().unwrap();
    for (text, key) in [
        (r#"{"temperature": "warm"}"#, "`temperature`"),
        (r#"{"sampler": "best"}"#, "`sampler`"),
        (r#"{"steps": 0}"#, "`steps`"),
    ] {
        std::fs::write(dir.join("generation_config.json"), text).unwrap();
        for args in [vec!["generate", d, "--prompt", "the"], vec!["info", d]] {
            let e = dlm_fails(&args);
            assert!(
                e.contains("generation_config.json") && e.contains(key) && !e.contains("panicked"),
                "{args:?} {text}: {e}"
            );
        }
    }
}
