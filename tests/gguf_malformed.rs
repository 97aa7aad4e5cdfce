//! GGUF import on crafted files: a tiny valid llama model (checks dequantisation of every
//! supported type and the Q/K un-permutation), then truncations, corruptions and unsupported
//! content, each of which must give an error naming the file and the problem, never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::gguf::{Gguf, V};
use dlm::data::gguf_tokenizer::import_gguf_tokenizer;
use dlm::model::gguf::import_llama_gguf;

fn f32s(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
}

const H: u64 = 32; // hidden; 2 heads of 16, 1 KV head
const FFN: u64 = 64;

/// A complete one-layer llama with a 4-token BPE. attn_q holds its GGUF row index in every
/// element, so the un-permutation is visible; ffn_gate/up/down use quantised types.
fn tiny() -> Gguf {
    let toks: Vec<String> = ["<|endoftext|>", "a", "b", "ab"].map(String::from).to_vec();
    let vocab = toks.len() as u64;
    let kv = vec![
        ("general.architecture".into(), V::Str("llama")),
        ("general.name".into(), V::Str("tiny")),
        ("llama.block_count".into(), V::U32(1)),
        ("llama.embedding_length".into(), V::U32(H as u32)),
        ("llama.attention.head_count".into(), V::U32(2)),
        ("llama.attention.head_count_kv".into(), V::U32(1)),
        ("llama.feed_forward_length".into(), V::U32(FFN as u32)),
        ("llama.context_length".into(), V::U32(128)),
        ("llama.rope.freq_base".into(), V::F32(500.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            V::F32(1e-6),
        ),
        ("tokenizer.ggml.model".into(), V::Str("gpt2")),
        ("tokenizer.ggml.pre".into(), V::Str("smollm")),
        ("tokenizer.ggml.tokens".into(), V::Strs(toks)),
        ("tokenizer.ggml.merges".into(), V::Strs(vec!["a b".into()])),
        (
            "tokenizer.ggml.token_type".into(),
            V::I32s(vec![3, 1, 1, 1]),
        ),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(0)),
    ];
    let f = |n: u64| f32s((0..n).map(|i| i as f32 * 0.5));
    let q_rows = f32s((0..H * H).map(|i| (i / H) as f32));
    // Q8_0 block: d = 0.5 (f16 0x3800), q = -16..16.
    let q8 = |blocks: u64| -> Vec<u8> {
        (0..blocks)
            .flat_map(|_| [0x00, 0x38].into_iter().chain((-16i8..16).map(|q| q as u8)))
            .collect()
    };
    // Q4_0 block: d = 2 (0x4000), bytes 0x10 + j: low nibble j, high nibble 1.
    let q4_0 = |blocks: u64| -> Vec<u8> {
        (0..blocks)
            .flat_map(|_| [0x00, 0x40].into_iter().chain((0..16u8).map(|j| 0x10 + j)))
            .collect()
    };
    // F16 1.0 = 0x3c00; BF16 -2.0 = 0xc000.
    let f16s = |n: u64| (0..n).flat_map(|_| [0x00, 0x3c]).collect::<Vec<u8>>();
    let bf16s = |n: u64| (0..n).flat_map(|_| [0x00, 0xc0]).collect::<Vec<u8>>();
    let tensors = vec![
        ("token_embd.weight".into(), vec![H, vocab], 0, f(H * vocab)),
        ("output_norm.weight".into(), vec![H], 0, f(H)),
        ("blk.0.attn_norm.weight".into(), vec![H], 0, f(H)),
        ("blk.0.ffn_norm.weight".into(), vec![H], 1, f16s(H)),
        ("blk.0.attn_q.weight".into(), vec![H, H], 0, q_rows),
        ("blk.0.attn_k.weight".into(), vec![H, 16], 0, f(H * 16)),
        ("blk.0.attn_v.weight".into(), vec![H, 16], 30, bf16s(H * 16)),
        ("blk.0.attn_output.weight".into(), vec![H, H], 0, f(H * H)),
        ("blk.0.ffn_gate.weight".into(), vec![H, FFN], 8, q8(FFN)),
        ("blk.0.ffn_up.weight".into(), vec![H, FFN], 2, q4_0(FFN)),
        ("blk.0.ffn_down.weight".into(), vec![FFN, H], 0, f(FFN * H)),
    ];
    Gguf { kv, tensors }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Imports `bytes` (the model, then its tokenizer) and returns the error message, asserting that
/// it names the file and contains every one of `needles`.
fn expect_err(bytes: &[u8], needles: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "model.gguf", bytes);
    let msg = match import_llama_gguf(&path).and_then(|_| import_gguf_tokenizer(&path)) {
        Ok(_) => panic!("import succeeded; expected an error containing {needles:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains(&path.display().to_string()),
        "path missing from: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "{n:?} missing from: {msg}");
    }
    msg
}

#[test]
fn tiny_model_imports_with_expected_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "tiny.gguf", &tiny().write().0);
    let imp = import_llama_gguf(&path).unwrap();
    let p = &imp.params;
    assert_eq!(
        (
            p.n_layer,
            p.hidden,
            p.n_head,
            p.n_kv_head,
            p.head_dim,
            p.ffn,
            p.vocab
        ),
        (1, 32, 2, 1, 16, 64, 4)
    );
    assert_eq!(
        (p.rope_theta, p.rms_eps as f32, p.context_length),
        (500.0, 1e-6, 128)
    );
    assert_eq!(
        (p.bos_id, p.eos_id, p.pad_id, p.tied),
        (None, Some(0), None, true)
    );
    assert_eq!(imp.tensors.len(), 11);
    let get = |n: &str| imp.tensors.iter().find(|(k, _)| k == n).unwrap().1.clone();
    // Row r of HF q_proj is GGUF row h*16 + 2i + s for r = h*16 + s*8 + i.
    let q: Vec<Vec<f32>> = get("model.layers.0.self_attn.q_proj.weight")
        .to_vec2()
        .unwrap();
    let firsts: Vec<f32> = q.iter().map(|r| r[0]).collect();
    let want: Vec<f32> = (0..2)
        .flat_map(|h| (0..2).flat_map(move |s| (0..8).map(move |i| (h * 16 + 2 * i + s) as f32)))
        .collect();
    assert_eq!(firsts, want);
    let gate: Vec<Vec<f32>> = get("model.layers.0.mlp.gate_proj.weight")
        .to_vec2()
        .unwrap();
    assert_eq!(
        gate[5],
        (-16..16).map(|q| q as f32 * 0.5).collect::<Vec<_>>()
    );
    let up: Vec<Vec<f32>> = get("model.layers.0.mlp.up_proj.weight").to_vec2().unwrap();
    let want: Vec<f32> = (0..16)
        .map(|j| 2.0 * (j as f32 - 8.0))
        .chain((0..16).map(|_| -14.0))
        .collect();
    assert_eq!(up[63], want);
    let norm: Vec<f32> = get("model.layers.0.post_attention_layernorm.weight")
        .to_vec1()
        .unwrap();
    assert!(norm.iter().all(|&x| x == 1.0));
    let v: Vec<Vec<f32>> = get("model.layers.0.self_attn.v_proj.weight")
        .to_vec2()
        .unwrap();
    assert!(v.iter().flatten().all(|&x| x == -2.0));
    let tokenizer = import_gguf_tokenizer(&path).unwrap();
    assert_eq!(tokenizer.encode("ab<|endoftext|>").unwrap(), vec![3, 0]);
}

#[test]
fn truncated_files_name_what_was_being_read() {
    let (bytes, l) = tiny().write();
    expect_err(&bytes[..0], &["truncated while reading the magic number"]);
    expect_err(&bytes[..6], &["truncated while reading the version"]);
    expect_err(
        &bytes[..20],
        &["truncated while reading the metadata count"],
    );
    expect_err(&bytes[..l.metadata + 30], &["metadata"]);
    expect_err(
        &bytes[..l.tensor_infos - 3],
        &["truncated while reading", "tokenizer.ggml.eos_token_id"],
    );
    expect_err(
        &bytes[..l.tensor_infos + 40],
        &["truncated while reading tensor info 1 of 11"],
    );
    expect_err(&bytes[..l.data + 100], &["data extends past end of file"]);
    expect_err(
        &bytes[..bytes.len() - 40],
        &["blk.0.ffn_down.weight", "data extends past end of file"],
    );
}

#[test]
fn garbage_and_wrong_magic() {
    expect_err(b"GGML\x03\0\0\0", &["not a GGUF file"]);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for len in [1usize, 7, 64, 4096] {
        let junk: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        expect_err(&junk, &[]);
    }
    // A valid header followed by junk.
    let mut junk = b"GGUF\x03\0\0\0".to_vec();
    junk.extend((0..4096).map(|_| rnd() as u8));
    expect_err(&junk, &[]);
    // Single-byte corruptions anywhere before the data: an error or a clean import, no panic.
    let (bytes, l) = tiny().write();
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..400 {
        let mut b = bytes.clone();
        let at = rnd() as usize % l.data;
        b[at] = rnd() as u8;
        let p = write_file(dir.path(), "fuzz.gguf", &b);
        let _ = import_llama_gguf(&p);
        let _ = import_gguf_tokenizer(&p);
    }
}

#[test]
fn huge_lengths_are_refused_without_allocating() {
    let mut g = tiny();
    g.set("x.str", V::Raw(8, u64::MAX.to_le_bytes().to_vec()));
    expect_err(
        &g.write().0,
        &["x.str", "string of 18446744073709551615 bytes"],
    );
    let mut g = tiny();
    let arr = 4u32
        .to_le_bytes()
        .into_iter()
        .chain((1u64 << 60).to_le_bytes())
        .collect();
    g.set("x.arr", V::Raw(9, arr));
    expect_err(&g.write().0, &["x.arr", "truncated or corrupt"]);
    let (mut b, _) = tiny().write();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err(&b, &["tensor infos"]);
    let mut g = tiny();
    g.tensor_mut("blk.0.attn_norm.weight").1 = vec![1 << 40, 1 << 40];
    expect_err(
        &g.write().0,
        &["blk.0.attn_norm.weight", "impossibly large"],
    );
    let mut g = tiny();
    g.set("x.bad", V::Raw(77, vec![0; 8]));
    expect_err(&g.write().0, &["unknown value type 77"]);
}

#[test]
fn unsupported_types_are_named() {
    let mut g = tiny();
    g.tensor_mut("blk.0.ffn_up.weight").2 = 13;
    expect_err(
        &g.write().0,
        &[
            "tensor blk.0.ffn_up.weight has quantisation type Q5_K (13)",
            "Q4_1",
        ],
    );
    let mut g = tiny();
    g.tensor_mut("blk.0.ffn_up.weight").2 = 99;
    expect_err(&g.write().0, &["blk.0.ffn_up.weight", "unknown (99)"]);
}

#[test]
fn unsupported_models_are_refused_by_name() {
    let cases: Vec<(&str, V, &[&str])> = vec![
        (
            "general.architecture",
            V::Str("gpt2"),
            &["\"gpt2\"", "only \"llama\""],
        ),
        (
            "llama.rope.scaling.type",
            V::Str("yarn"),
            &["RoPE scaling", "yarn"],
        ),
        (
            "tokenizer.ggml.model",
            V::Str("llama"),
            &["tokenizer model \"llama\""],
        ),
        (
            "tokenizer.ggml.pre",
            V::Str("deepseek-llm"),
            &["deepseek-llm"],
        ),
        ("llama.attention.head_count", V::U32(3), &["3 heads"]),
        ("llama.rope.dimension_count", V::U32(8), &["partial RoPE"]),
        (
            "tokenizer.ggml.bos_token_id",
            V::U32(9),
            &["bos_token_id 9"],
        ),
        (
            "tokenizer.ggml.merges",
            V::Strs(vec!["a c".into()]),
            &["embedded tokenizer"],
        ),
    ];
    for (key, v, needles) in cases {
        let mut g = tiny();
        g.set(key, v);
        expect_err(&g.write().0, needles);
    }
    let mut g = tiny();
    g.kv.retain(|(k, _)| k != "llama.block_count");
    expect_err(&g.write().0, &["llama.block_count is missing"]);
    let mut g = tiny();
    g.tensor_mut("blk.0.ffn_down.weight").0 = "blk.0.ffn_sideways.weight".into();
    expect_err(&g.write().0, &["unknown tensor blk.0.ffn_sideways.weight"]);
    let mut g = tiny();
    g.tensor_mut("blk.0.ffn_down.weight").0 = "blk.1.ffn_down.weight".into();
    expect_err(&g.write().0, &["layer 1 >= block_count 1"]);
    let mut g = tiny();
    g.tensors.retain(|t| t.0 != "blk.0.attn_v.weight");
    expect_err(
        &g.write().0,
        &["missing tensors", "model.layers.0.self_attn.v_proj.weight"],
    );
    let mut g = tiny();
    g.tensor_mut("blk.0.attn_k.weight").1 = vec![16, H];
    expect_err(&g.write().0, &["blk.0.attn_k.weight has shape [32, 16]"]);
    let (mut b, _) = tiny().write();
    b[4] = 1;
    expect_err(&b, &["version 1"]);
}
