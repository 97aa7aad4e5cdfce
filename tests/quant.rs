//! Kept-quantised weights (src/ops/quant): every block format's product on every kernel this CPU
//! has (a missing one is reported as skipped, by name) against an f64 reference of the
//! dequantised weights; the block layouts against candle's independent ggml implementation; the
//! quantisers' round-trip error bounds.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use dlm::ops::quant::{
    dequantize, dequantize_block, quantize_block, QuantActs, QuantKernel, QuantMatrix, QuantType,
};
use dlm::rng::Rng;

fn normal(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn candle_type(ty: QuantType) -> GgmlDType {
    match ty {
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q4_0 => GgmlDType::Q4_0,
        QuantType::Q4_1 => GgmlDType::Q4_1,
        QuantType::Q4K => GgmlDType::Q4K,
    }
}

/// A random `[n, k]` matrix quantised to `ty` by candle (whose quantisers are ggml's), so the
/// blocks under test come from outside dlm.
fn random_matrix(ty: QuantType, n: usize, k: usize, rng: &mut Rng) -> QuantMatrix {
    let w = Tensor::from_vec(normal(n * k, rng), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, candle_type(ty)).unwrap();
    let bytes = q.data().unwrap().to_vec();
    let blocks = Tensor::from_vec(bytes, (n, ty.row_bytes(k)), &Device::Cpu).unwrap();
    QuantMatrix::from_blocks(ty, blocks, n, k).unwrap()
}

/// Every block type dequantises exactly as candle's ggml port does.
#[test]
fn block_layouts_match_candle() {
    let mut rng = Rng::seed(1);
    for ty in QuantType::ALL {
        let (n, k) = (3, 512);
        let w = Tensor::from_vec(normal(n * k, &mut rng), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, candle_type(ty)).unwrap();
        let want: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = dequantize(ty, &q.data().unwrap()).unwrap();
        assert_eq!(got, want, "{ty:?}");
    }
}

/// y = x·Wᵀ on each kernel, M = 1, 3, 17 and N not a multiple of 8, against two f64
/// references: (a) the dequantised weights times the int8-quantised activations, which the
/// kernel computes exactly up to f32 summation (relative 1e-5 of Σ|w·x|); (b) the dequantised
/// weights times the exact activations, within the activation rounding bound
/// Σ_blocks (d_x / 2)·Σ|w| (+ the same f32 slack).
#[test]
fn products_match_f64_reference_on_every_kernel() {
    let mut rng = Rng::seed(2);
    for kernel in QuantKernel::ALL {
        if !kernel.available() {
            println!("kernel {}: skipped (this CPU lacks it)", kernel.name());
            continue;
        }
        println!("kernel {}: run", kernel.name());
        for ty in QuantType::ALL {
            let ks: &[usize] = match ty {
                QuantType::Q4K => &[256, 768],
                _ => &[32, 96, 288],
            };
            for &k in ks {
                for (m, n) in [(1, 13), (3, 1), (17, 70)] {
                    check_product(kernel, ty, m, n, k, &mut rng);
                }
            }
        }
    }
}

fn check_product(kernel: QuantKernel, ty: QuantType, m: usize, n: usize, k: usize, rng: &mut Rng) {
    let q = random_matrix(ty, n, k, rng);
    let w = q.dequantize().unwrap();
    let x = normal(m * k, rng);
    let y = q.matmul_with(kernel, &x, m).unwrap();
    assert_eq!(y.len(), m * n);
    let acts = QuantActs::new(&x, k);
    for i in 0..m {
        let a = acts.row(i);
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let (mut exact, mut on_int8, mut mag, mut bound) = (0f64, 0f64, 0f64, 0f64);
            for (b, wb) in wr.chunks(32).enumerate() {
                let mut wabs = 0f64;
                for (t, &wv) in wb.iter().enumerate() {
                    let col = b * 32 + t;
                    let xq = a.d[b] as f64 * a.qs[col] as f64;
                    exact += wv as f64 * x[i * k + col] as f64;
                    on_int8 += wv as f64 * xq;
                    mag += (wv as f64 * xq).abs();
                    wabs += (wv as f64).abs();
                }
                bound += a.d[b] as f64 / 2.0 * wabs;
            }
            let got = y[i * n + j] as f64;
            let slack = 1e-5 * mag + 1e-6;
            let what = format!("{} {ty:?} m {m} n {n} k {k} at ({i}, {j})", kernel.name());
            assert!((got - on_int8).abs() <= slack, "{what}: {got} vs {on_int8}");
            assert!(
                (got - exact).abs() <= bound + slack,
                "{what}: {got} vs exact {exact}, bound {bound}"
            );
        }
    }
}

/// Quantise/dequantise round trips, per block with d the block's step: Q8_0 within 0.5·d (+ the
/// f16 rounding of d over 127 steps: ≤ 0.57·d in all), Q4_0 within 1.0·d (+ f16: ≤ 1.01·d; the
/// value opposite the extreme can clamp a whole step), Q4_1 within 0.5·d plus the f16 rounding
/// of d over 15 steps and of the minimum (≤ 0.51·d + |min|·2⁻¹⁰).
#[test]
fn round_trip_error_bounds() {
    let mut rng = Rng::seed(3);
    for ty in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1] {
        let mut worst = 0f32;
        for _ in 0..200 {
            let x: Vec<f32> = normal(32, &mut rng).iter().map(|v| v * 3.0).collect();
            let mut bytes = Vec::new();
            quantize_block(ty, &x, &mut bytes);
            assert_eq!(bytes.len(), ty.block_bytes());
            let mut back = Vec::new();
            dequantize_block(ty, &bytes, &mut back);
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let min = x.iter().copied().fold(f32::INFINITY, f32::min);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (d, allowed) = match ty {
                QuantType::Q8_0 => (amax / 127.0, 0.57 * amax / 127.0),
                QuantType::Q4_0 => (amax / 8.0, 1.01 * amax / 8.0),
                _ => {
                    let d = (max - min) / 15.0;
                    (d, 0.51 * d + min.abs() / 1024.0)
                }
            };
            for (a, b) in x.iter().zip(&back) {
                assert!(
                    (a - b).abs() <= allowed,
                    "{ty:?}: {a} → {b}, allowed {allowed}"
                );
                worst = worst.max((a - b).abs() / d);
            }
        }
        println!("{ty:?}: worst round-trip error {worst:.3} steps");
    }
}

/// Quantising through dlm and through candle gives the same blocks (both follow ggml's
/// reference quantisers).
#[test]
fn quantisers_match_candle() {
    let mut rng = Rng::seed(4);
    for ty in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1] {
        let (n, k) = (5, 64);
        let w = normal(n * k, &mut rng);
        let ours = QuantMatrix::quantize(ty, &w, n, k).unwrap();
        let t = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let theirs = QTensor::quantize(&t, candle_type(ty)).unwrap();
        let ours: Vec<u8> = ours.blocks().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(ours, theirs.data().unwrap().to_vec(), "{ty:?}");
    }
}

/// Bad shapes are errors, not panics.
#[test]
fn bad_shapes_are_refused() {
    let blocks = Tensor::zeros((2, 34), candle_core::DType::U8, &Device::Cpu).unwrap();
    let e = QuantMatrix::from_blocks(QuantType::Q8_0, blocks.clone(), 2, 48).unwrap_err();
    assert!(e.to_string().contains("not a multiple"), "{e}");
    let e = QuantMatrix::from_blocks(QuantType::Q4_0, blocks.clone(), 2, 32).unwrap_err();
    assert!(e.to_string().contains("U8 CPU tensor"), "{e}");
    let q = QuantMatrix::from_blocks(QuantType::Q8_0, blocks, 2, 32).unwrap();
    assert!(q.matmul_with(QuantKernel::Scalar, &[0.0; 31], 1).is_err());
    assert!(QuantMatrix::quantize(QuantType::Q4K, &[0.0; 256], 1, 256).is_err());
}
