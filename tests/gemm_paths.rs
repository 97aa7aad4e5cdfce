//! dlm's GEMM on every path this CPU runs (DLM_CPU_ISA aside: each path is called by name),
//! against an f64 reference, for a linear layer's three products in both weight layouts, with f32
//! and bf16 operands, on awkward shapes: M = 1, 3, 17, 33, 255; N and K not multiples of the 16-column
//! panel, the 6-row tile or the 256-deep k-block; K below one k-block and above it. A path the
//! CPU lacks, or one without kernels yet, is printed as skipped by name.
//!
//! Tolerance. The operands reach the kernels exactly (bf16 widens to f32 without rounding, and
//! the bf16 paths' rounding of a to bf16 is exact when a is already bf16), so the only error is
//! f32 accumulation over k terms: |got − want| ≤ γ·Σ_q |a_iq·b_qj| with the standard bound
//! γ = k·2⁻²⁴/(1 − k·2⁻²⁴); the test asserts 2γ (blocked sums reassociate) and prints the worst
//! measured fraction of γ. Where a bf16 path rounds an f32 a (the inference form, f32
//! activations against bf16 weights), the reference uses a rounded to bf16 (round to nearest
//! even), so the kernels' rounding is checked to the bit. (bf16 rounding of f32 inputs in
//! training is tested in the bf16 linear layer's unit tests.)

use dlm::ops::gemm::{bf16, matmul_acc_on, runnable_paths, Data, Isa, MatRef, PackedWeight};
use dlm::rng::Rng;

/// The f64 product of two views, and Σ|a||b| per element (the error scale).
fn reference(a: &View, b: &View) -> (Vec<f64>, Vec<f64>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (mut c, mut scale) = (vec![0f64; m * n], vec![0f64; m * n]);
    for i in 0..m {
        for j in 0..n {
            for q in 0..k {
                let p = a.at(i, q) * b.at(q, j);
                c[i * n + j] += p;
                scale[i * n + j] += p.abs();
            }
        }
    }
    (c, scale)
}

/// A strided view over owned f32 values (and their bf16 roundings, when the case is bf16).
struct View<'a> {
    f32s: &'a [f32],
    bf16s: Option<&'a [bf16]>,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl View<'_> {
    fn at(&self, i: usize, j: usize) -> f64 {
        let idx = i * self.rs + j * self.cs;
        match self.bf16s {
            Some(b) => b[idx].to_f64(),
            None => self.f32s[idx] as f64,
        }
    }

    fn mat(&self) -> MatRef<'_> {
        MatRef {
            data: match self.bf16s {
                Some(b) => Data::Bf16(b),
                None => Data::F32(self.f32s),
            },
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }

    /// The transpose, in place.
    fn t(&self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..*self
        }
    }
}

/// c = a·b on `path`, against the reference; returns the worst |error| / γ·scale.
fn check(path: Isa, what: &str, a: &View, b: &View) -> f64 {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    // Start from a nonzero c: the kernels accumulate into it.
    let c0: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 * 0.25).collect();
    let mut c = c0.clone();
    matmul_acc_on(path, a.mat(), b.mat(), &mut c);
    let (want, scale) = reference(a, b);
    let u = (k as f64) * 2f64.powi(-24);
    let gamma = u / (1.0 - u);
    let mut worst = 0f64;
    for idx in 0..m * n {
        let err = (c[idx] as f64 - c0[idx] as f64 - want[idx]).abs();
        // c0 + product rounds once more at the end: half an ulp of the result.
        let bound = gamma * scale[idx] + (c[idx] as f64).abs() * 2f64.powi(-24) + 1e-30;
        worst = worst.max(err / bound);
        assert!(
            err <= 2.0 * bound,
            "{path} {what} ({m}×{k}·{k}×{n}) [{}, {}]: {} vs {}, error {err:.3e} > 2·bound {bound:.3e}",
            idx / n,
            idx % n,
            c[idx] as f64 - c0[idx] as f64,
            want[idx]
        );
    }
    worst
}

#[test]
fn every_path_matches_f64_on_awkward_shapes() {
    let (paths, skipped) = runnable_paths();
    for s in &skipped {
        println!("{s}");
    }
    assert!(paths.contains(&Isa::Generic));
    let mut rng = Rng::seed(15);
    let mut worst = 0f64;
    for path in &paths {
        println!("gemm path {path}: running");
    }
    for (m, d_in, d_out) in [
        (1, 7, 5),
        (1, 37, 40),
        (3, 100, 33),
        (17, 45, 17),
        (255, 300, 21),
        (17, 257, 70),
        // A whole 32-row block and one row (a dual-cache window).
        (33, 64, 40),
        (3, 5, 1),
    ] {
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect() };
        let (x, w, dy) = (values(m * d_in), values(d_in * d_out), values(m * d_out));
        let round = |v: &[f32]| v.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
        let (x16, w16, dy16) = (round(&x), round(&w), round(&dy));
        for is_bf16 in [false, true] {
            fn pick(f: &[bf16], on: bool) -> Option<&[bf16]> {
                on.then_some(f)
            }
            let xv = View {
                f32s: &x,
                bf16s: pick(&x16, is_bf16),
                rows: m,
                cols: d_in,
                rs: d_in,
                cs: 1,
            };
            let dyv = View {
                f32s: &dy,
                bf16s: pick(&dy16, is_bf16),
                rows: m,
                cols: d_out,
                rs: d_out,
                cs: 1,
            };
            // HF [out, in] and GPT-2 Conv1D [in, out], each read as the [in, out] matrix W.
            for (layout, rs, cs) in [("out-in", 1, d_in), ("in-out", d_out, 1)] {
                let wv = View {
                    f32s: &w,
                    bf16s: pick(&w16, is_bf16),
                    rows: d_in,
                    cols: d_out,
                    rs,
                    cs,
                };
                let dtype = if is_bf16 { "bf16" } else { "f32" };
                for path in &paths {
                    let what = |p: &str| format!("{p} {layout} {dtype}");
                    worst = worst.max(check(*path, &what("forward x·W"), &xv, &wv));
                    worst = worst.max(check(*path, &what("input gradient dy·Wᵀ"), &dyv, &wv.t()));
                    let dw = if layout == "out-in" {
                        check(*path, &what("weight gradient dyᵀ·x"), &dyv.t(), &xv)
                    } else {
                        check(*path, &what("weight gradient xᵀ·dy"), &xv.t(), &dyv)
                    };
                    worst = worst.max(dw);
                }
            }
        }
    }
    println!("worst error: {worst:.3} of the f32 accumulation bound γ·Σ|a·b|");
}

/// The inference form, a weight packed once from its stored layout ([out, in] or Conv1D's
/// [in, out]) in f32 or bf16, against a plain loop: rows not a multiple of the tile or of a row
/// block, columns not a multiple of 16, k split into blocks; and a bf16 weight packed in half
/// the bytes of the f32 one.
#[test]
fn packed_weight_matches_the_definition() {
    let mut rng = Rng::seed(7);
    for (m, n, k) in [
        (1, 1, 1),
        // One row (batch-1 decoding): panels in pairs, a partial second one, a single last.
        (1, 20, 13),
        (1, 35, 1300),
        (1, 48, 9),
        (5, 7, 13),
        (6, 16, 8),
        (300, 35, 1300),
        (9, 4099, 21),
        // AMX blocks: 32 rows and a single last row, two panel pairs and a partial panel.
        (33, 70, 96),
        (16, 32, 32),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.uniform_f32() - 0.5).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.uniform_f32() - 0.5).collect();
        let w16: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let bias: Vec<f32> = (0..m * n).map(|_| rng.uniform_f32()).collect();
        // What a bf16 path multiplies a bf16 weight with: x rounded to bf16.
        let x_rounded: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        for transposed in [false, true] {
            for path in runnable_paths().0 {
                let (a, b) = (
                    PackedWeight::new_on(path, Data::F32(&w), n, k, transposed),
                    PackedWeight::new_on(path, Data::Bf16(&w16), n, k, transposed),
                );
                assert_eq!(a.bytes(), n.div_ceil(16) * 16 * k * 4);
                // bf16 takes half the bytes (the pair layout pads k to a multiple of 32).
                let k16 = if path.bf16_products() {
                    k.div_ceil(32) * 32
                } else {
                    k
                };
                assert_eq!(b.bytes(), n.div_ceil(16) * 16 * k16 * 2);
                for (packed, is_bf16) in [(a, false), (b, true)] {
                    let at = |j: usize, p: usize| {
                        let i = if transposed { p * n + j } else { j * k + p };
                        if is_bf16 {
                            w16[i].to_f32()
                        } else {
                            w[i]
                        }
                    };
                    let xs = if is_bf16 && path.bf16_products() {
                        &x_rounded
                    } else {
                        &x
                    };
                    let mut y = bias.clone();
                    packed.matmul_acc_on(path, MatRef::row_major(Data::F32(&x), m, k), &mut y);
                    for i in 0..m {
                        for j in 0..n {
                            let want: f32 = bias[i * n + j]
                                + (0..k).map(|p| xs[i * k + p] * at(j, p)).sum::<f32>();
                            let got = y[i * n + j];
                            assert!(
                                (got - want).abs() < 1e-3,
                                "{path} ({m},{n},{k}) transposed {transposed} bf16 {is_bf16} \
                                 [{i},{j}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// What rounding f32 operands to bf16 costs a product (the bf16 model's error at one GEMM):
/// bf16 keeps 8 significant bits (unit roundoff 2⁻⁸), so each operand is within a relative 2⁻⁸
/// of its f32 value, |a16·b16 − a·b| ≤ (2·2⁻⁸ + 2⁻¹⁶)·|a·b|, and the product's error is within
/// (2⁻⁷ + 2⁻¹⁶ + γ)·Σ|a·b|. Asserted, and the worst measured
/// fraction of Σ|a·b| printed (independent errors make it far smaller than the bound).
#[test]
fn bf16_rounding_of_operands_stays_within_its_bound() {
    let mut rng = Rng::seed(16);
    let (m, k, n) = (17, 300, 33);
    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect();
    let (a16, b16): (Vec<bf16>, Vec<bf16>) = (
        a.iter().map(|&v| bf16::from_f32(v)).collect(),
        b.iter().map(|&v| bf16::from_f32(v)).collect(),
    );
    let bound = 2f64.powi(-7) + 2f64.powi(-16) + 1.01 * k as f64 * 2f64.powi(-24);
    for path in runnable_paths().0 {
        let mut c = vec![0f32; m * n];
        matmul_acc_on(
            path,
            MatRef::row_major(Data::Bf16(&a16), m, k),
            MatRef::row_major(Data::Bf16(&b16), k, n),
            &mut c,
        );
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|q| a[i * k + q] as f64 * b[q * n + j] as f64);
                let (want, scale) = terms.fold((0.0, 0.0), |(s, t), p| (s + p, t + p.abs()));
                let rel = (c[i * n + j] as f64 - want).abs() / scale;
                assert!(
                    rel <= bound,
                    "{path} [{i},{j}]: {rel:.3e} of Σ|a·b| > {bound:.3e}"
                );
                worst = worst.max(rel);
            }
        }
        println!("{path}: bf16 operands: worst error {worst:.2e}·Σ|a·b| (bound {bound:.2e})");
    }
}
