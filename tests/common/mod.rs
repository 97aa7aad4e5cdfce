//! Shared helpers for the parity tests: fixture paths and tensor comparison.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub const TINY: [&str; 3] = ["gpt2-tiny", "llama-tiny", "llama-tiny-tied"];

/// The golden tensors of a tiny fixture.
pub fn golden(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu)
        .expect("golden.safetensors")
}

pub fn golden_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

/// Max |a − b| over all entries, after both are cast to f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Asserts closeness and prints the measured difference next to the tolerance, as llm.c does.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f32) {
    let d = max_abs_diff(got, want);
    println!("{what}: max |Δ| = {d:.3e} (atol {atol:.0e})");
    assert!(d <= atol, "{what}: max |Δ| = {d:e} exceeds {atol:e}");
}

pub fn ids_u32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}
