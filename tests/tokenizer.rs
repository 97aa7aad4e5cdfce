//! Tokenizer wrapper: SmolLM2's GGUF-embedded BPE against the golden fixture ids, GPT-2's BPE
//! from the original OpenAI files, and the wrapper's own conventions (no BOS, whole special
//! tokens, out-of-vocabulary ids rejected, atomic save).

mod common;

use std::sync::OnceLock;

use common::asset;
use dlm::data::gguf_tokenizer::import_gguf_tokenizer;
use dlm::data::tokenizer::{PreTokenizer, Tokenizer};
use dlm::Error;

fn smollm2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| import_gguf_tokenizer(&common::smollm2_gguf()).unwrap())
}

fn golden() -> serde_json::Value {
    common::golden_json("smollm2-135m")
}

#[test]
fn smollm2_matches_fixture_prompt_ids() {
    let tok = smollm2();
    let g = golden();
    let prompts = g["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 3);
    for p in prompts {
        let text = p["prompt"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(p["prompt_ids"].clone()).unwrap();
        assert_eq!(tok.encode(text).unwrap(), want, "prompt {text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text);
    }
}

#[test]
fn smollm2_specials_digits_and_round_trip() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.id_to_token(2).as_deref(), Some("<|im_end|>"));
    // Control tokens in text are matched whole, and no BOS is added.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    // `smollm` splits every digit on its own.
    let digits = tok.encode("2024").unwrap();
    assert_eq!(digits.len(), 4, "{digits:?}");
    for text in [
        "",
        " leading space",
        "Numbers 1234567 and 3.14159!",
        "tabs\tand\nnewlines\r\n  double  spaces",
        "unicode: café, 日本語, emoji 🦀",
        "<|im_start|>assistant\nThe answer<|im_end|>\n",
    ] {
        assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
    }
}

#[test]
fn decode_rejects_ids_outside_vocab() {
    let tok = smollm2();
    let err = tok.decode(&[5, 49152]).unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("49152") && msg.contains("vocabulary"), "{msg}");
}

#[test]
fn add_mask_token_save_and_reload() {
    let mut tok = smollm2().clone();
    let id = tok.add_special_token("[MASK]").unwrap();
    assert_eq!(id, 49152);
    assert_eq!(tok.vocab_size(), 49153);
    // Adding it again is a no-op returning the same id.
    assert_eq!(tok.add_special_token("[MASK]").unwrap(), 49152);
    assert!(tok.add_special_token("").is_err());
    let ids = tok.encode("a [MASK] b").unwrap();
    assert!(ids.contains(&49152), "{ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), "a [MASK] b");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    // Only the target is left behind, not the temporary file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let back = Tokenizer::from_file(&path).unwrap();
    assert_eq!(back.vocab_size(), 49153);
    let g = golden();
    for p in g["prompts"].as_array().unwrap() {
        let text = p["prompt"].as_str().unwrap();
        assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap());
    }
    assert_eq!(back.encode("a [MASK] b").unwrap(), ids);
}

#[test]
fn from_file_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.json");
    let msg = Tokenizer::from_file(&path).unwrap_err().to_string();
    assert!(msg.contains("nope.json"), "{msg}");
    std::fs::write(&path, "{not json").unwrap();
    let msg = Tokenizer::from_file(&path).unwrap_err().to_string();
    assert!(msg.contains("nope.json"), "{msg}");
}

#[test]
fn gpt2_from_openai_files() {
    let enc = asset("gpt2/encoder.json", "gpt2-tokenizer");
    let bpe = asset("gpt2/vocab.bpe", "gpt2-tokenizer");
    let tok = Tokenizer::from_gpt2_files(&enc, &bpe).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(
        tok.encode(" Hello, world!").unwrap(),
        vec![18435, 11, 995, 0]
    );
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(50256));
    let eot = tok.encode("Hi<|endoftext|>").unwrap();
    assert_eq!(*eot.last().unwrap(), 50256);
    // GPT-2 does not split digits.
    assert!(tok.encode("2024").unwrap().len() < 4);
    let text = "The quick brown fox jumps over 13 lazy dogs.\n\nÆsop — 1984";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
}

#[test]
fn from_bpe_parts_rejects_bad_input() {
    let toks: Vec<String> = ["a", "b", "ab", "a"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let msg = Tokenizer::from_bpe_parts(&toks, &[], &[], PreTokenizer::Gpt2)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("twice"), "{msg}");
    let toks = &toks[..3];
    let msg = Tokenizer::from_bpe_parts(toks, &["ab".into()], &[], PreTokenizer::Gpt2)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("merge 0"), "{msg}");
    let msg = Tokenizer::from_bpe_parts(toks, &["a c".into()], &[], PreTokenizer::Gpt2)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("BPE"), "{msg}");
    let msg = Tokenizer::from_bpe_parts(toks, &[], &[(7, "x".into())], PreTokenizer::Gpt2)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("id 7"), "{msg}");
}

/// Checks `pre` against the golden ids of `tests/fixtures/tokenizers/{name}-pretokenizer.json`
/// (a small byte-level vocabulary with a few merges; the reference library's ids for each text),
/// and that GPT-2's scheme gives other ids on some text: the pre-tokenizer is what is tested.
fn pre_tokenizer_matches_golden(name: &str, pre: PreTokenizer) {
    let path = format!(
        "{}/tests/fixtures/tokenizers/{name}-pretokenizer.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let strings = |k: &str| -> Vec<String> {
        g[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let build = |pre| Tokenizer::from_bpe_parts(&strings("tokens"), &strings("merges"), &[], pre);
    let tok = build(pre).unwrap();
    for case in g["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text).unwrap(), want, "{name}: {text:?}");
    }
    let gpt2 = build(PreTokenizer::Gpt2).unwrap();
    let differs = g["cases"].as_array().unwrap().iter().any(|case| {
        let text = case["text"].as_str().unwrap();
        gpt2.encode(text).unwrap() != tok.encode(text).unwrap()
    });
    assert!(
        differs,
        "{name}: GPT-2's scheme gives the same ids on every text"
    );
}

/// The `qwen2` pre-tokenizer (a Dream GGUF's `tokenizer.ggml.pre`) splits as transformers'
/// `Qwen2Tokenizer` does, for text with contractions in both cases, digit runs, NFD accents,
/// CJK, tabs, runs of spaces and of newlines (`scripts/fixtures/qwen2_pretokenizer.py`).
#[test]
fn qwen2_pre_tokenizer_matches_transformers() {
    pre_tokenizer_matches_golden("qwen2", PreTokenizer::Qwen2);
}

/// The `llama-bpe` pre-tokenizer (LLaMA-3-style GGUFs) splits as LLaMA-3's tokenizer.json does
/// (the `tokenizers` library with the pattern transformers' `TikTokenConverter` gives it): digits
/// in runs of up to three, no normalizer (`scripts/fixtures/llama3_pretokenizer.py`).
#[test]
fn llama3_pre_tokenizer_matches_tokenizers() {
    pre_tokenizer_matches_golden("llama3", PreTokenizer::Llama3);
}
