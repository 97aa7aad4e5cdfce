//! `dlm sft` of LLaDA and Dream checkpoints (the tiny fixture models), full and LoRA: each run
//! records its family's loss convention, every step's loss is finite, and the validation bound
//! (the same fixed draws each time) falls from the first step to the last.

mod common;

use std::path::{Path, PathBuf};

use common::{dlm, fixture};
use serde_json::{json, Value};

/// The words of the SFT pairs below, as a word-level tokenizer whose ids stay below the
/// fixtures' special ids (120 and up).
fn word_tokenizer() -> Value {
    let mut words: Vec<String> = ["[UNK]", "what", "is", "plus", "one", "?", "it", "now", "."]
        .map(String::from)
        .to_vec();
    words.extend((0..30).map(|i| i.to_string()));
    let vocab: serde_json::Map<String, Value> = words
        .into_iter()
        .enumerate()
        .map(|(i, w)| (w, json!(i)))
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    })
}

/// The fixture `name` with a tokenizer: a base model `dlm sft` can start from.
fn base(dir: &Path, name: &str) -> PathBuf {
    let base = dir.join(name);
    std::fs::create_dir_all(&base).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(file), base.join(file)).unwrap();
    }
    std::fs::write(base.join("tokenizer.json"), word_tokenizer().to_string()).unwrap();
    base
}

fn pairs(dir: &Path) -> PathBuf {
    let text: String = (0..24)
        .map(|i| {
            let pair = json!({"prompt": format!("what is {i} plus one ?"),
                              "response": format!("it is {} now .", i + 1)});
            format!("{pair}\n")
        })
        .collect();
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn records(run: &Path, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == kind)
        .collect()
}

#[test]
fn sft_trains_llada_and_dream_full_and_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs(tmp.path());
    let data = data.to_str().unwrap();
    for (name, convention) in [("llada-tiny", "llada"), ("dream-tiny", "dream")] {
        let base = base(tmp.path(), name);
        let lora_args = ["--lora-rank", "4", "--lora-alpha", "8"];
        // Full and LoRA in f32; LoRA in mixed-precision bf16 as well.
        for (lora, dtype) in [
            (&[][..], "f32"),
            (&lora_args[..], "f32"),
            (&lora_args[..], "bf16"),
        ] {
            let run = tmp.path().join(format!("{name}-{}-{dtype}", lora.len()));
            let mut args = vec![
                "sft",
                "--base",
                base.to_str().unwrap(),
                "--data",
                data,
                "--val-data",
                data,
                "--val-every",
                "1",
                "--val-batches",
                "2",
                "--seq-len",
                "16",
                "--micro-batch",
                "4",
                "--max-steps",
                "12",
                "--lr",
                "1e-2",
                "--schedule",
                "constant",
                "--out",
                run.to_str().unwrap(),
                "--no-progress",
                "--dtype",
                dtype,
            ];
            args.extend(lora);
            dlm(&args);
            let what = format!("{name} lora={} {dtype}", !lora.is_empty());
            let config = &records(&run, "config")[0]["run"]["objective"];
            assert_eq!(config["loss"], convention, "{what}");
            assert_eq!(config["shift"], convention == "dream", "{what}");
            let losses: Vec<f64> = records(&run, "train")
                .iter()
                .map(|r| r["loss"].as_f64().unwrap())
                .collect();
            assert_eq!(losses.len(), 12, "{what}");
            assert!(losses.iter().all(|l| l.is_finite()), "{what}: {losses:?}");
            let val: Vec<f64> = records(&run, "val")
                .iter()
                .map(|r| r["val_loss"].as_f64().unwrap())
                .collect();
            println!("{what}: validation {val:?}");
            let (first, last) = (val[0], val[val.len() - 1]);
            assert!(last < 0.5 * first, "{what}: validation {first} → {last}");
        }
    }
}
