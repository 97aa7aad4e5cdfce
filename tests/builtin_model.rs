//! The built-in model (weights/dlm-shakespeare-12m) as a new user meets it: `dlm info` shows its
//! generation defaults, and the README's main job, with no sampler flags, prints words rather
//! than blank lines, at least 25 words per 64 tokens (issue 16's bar for the main job); the
//! reference sampler stays available by flag.

mod common;

use common::*;
use serde_json::Value;

const BUILTIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/dlm-shakespeare-12m");

#[test]
fn info_shows_the_generation_defaults() {
    let info: Value = serde_json::from_slice(&dlm(["info", BUILTIN, "--json"]).stdout).unwrap();
    let g = &info["generation_defaults"];
    assert!(g["sampler"].is_string() && g["steps"].is_u64(), "{info}");
    assert_eq!(info["mask_token_id"], 1);
}

/// Words of `text`: whitespace-separated chunks with at least two letters.
fn words(text: &str) -> Vec<&str> {
    text.split_whitespace()
        .filter(|w| w.chars().filter(|c| c.is_alphabetic()).count() >= 2)
        .collect()
}

fn main_job(extra: &[&str]) -> Value {
    let mut args = vec!["generate", "--prompt", "Romeo.", "--json"];
    args.extend(extra);
    serde_json::from_slice(&dlm(args).stdout).unwrap()
}

#[test]
fn the_main_job_prints_words_not_blank_lines() {
    let v = main_job(&[]);
    let text = v["text"].as_str().unwrap();
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 64);
    // The old model's collapse (newlines and dots only) fails this floor.
    assert!(words(text).len() >= 8, "{text:?}");
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert!(distinct.len() >= 16, "{text:?}");
    // The reference sampler by flag (argmax top-k confidence) still runs.
    let r = main_job(&["--sampler", "topk-confidence"]);
    assert_eq!(r["ids"].as_array().unwrap().len(), 64);
}

/// Issue 16's bar for the main job itself: at least 25 words per 64 generated tokens (the
/// committed model's default sampler prints 33 here; 55 of 63 check canvases meet the whole bar,
/// see its MODEL_CARD.md).
#[test]
fn the_main_job_meets_the_word_bar() {
    let v = main_job(&[]);
    let text = v["text"].as_str().unwrap();
    assert!(words(text).len() >= 25, "{text:?}");
}
