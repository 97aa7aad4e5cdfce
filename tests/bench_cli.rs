//! `dlm bench train --config` takes a config.json as `dlm pretrain` does (the built-in model's
//! shape, say), and refuses a sequence past its positions or a file it cannot read, in one line.

mod common;

use common::*;

#[test]
fn bench_train_takes_a_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.json");
    let json = r#"{"model_type": "gpt2", "n_positions": 32, "n_embd": 32, "n_layer": 1,
        "n_head": 2, "activation_function": "gelu_new", "tie_word_embeddings": true}"#;
    std::fs::write(&config, json).unwrap();
    let config = config.to_str().unwrap();
    let args = [
        "bench", "train", "--config", config, "--vocab", "64", "--steps", "1",
    ];
    let out = dlm(args.iter().chain(&["--seq", "16", "--batch", "2"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 64·32 embedding + 32·32 positions + a block + the final norm; the head is the embedding.
    let block = 4 * 32 + (3 * 32 * 32 + 3 * 32) + (32 * 32 + 32) + 2 * (4 * 32 * 32) + 4 * 32 + 32;
    let params = 64 * 32 + 32 * 32 + block + 2 * 32;
    assert!(
        stdout.contains(&format!(
            "(tied head, {params} params, f32 compute on cpu) batch 2 seq 16"
        )),
        "{stdout}"
    );
    let err = dlm_fails(args.iter().chain(&["--seq", "33"]));
    assert!(err.contains("--seq 33 exceeds the 32 positions"), "{err}");
    let missing = tmp.path().join("missing.json");
    let err = dlm_fails(["bench", "train", "--config", missing.to_str().unwrap()]);
    assert!(
        err.contains("neither a size") && err.lines().count() == 1,
        "{err}"
    );
}
