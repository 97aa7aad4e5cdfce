//! dlm's own GEMM layer: one packed-panel kernel family for inference and training, f32 or bf16
//! operands, f32 accumulation, its path chosen once at start-up (isa.rs).
//!
//! Every product is c[m×n] += a[m×k]·b[k×n] with b packed into the kernel's panels in its own
//! dtype (packed_linear.rs): a model's weights once, on first use; training's operands per call.
//! A linear layer's three products are all of that form, with a and b read in place through
//! strides (`MatRef`):
//!
//!   forward           y  = x·Wᵀ      a = x,    b = Wᵀ
//!   input gradient    dx = dy·W      a = dy,   b = W
//!   weight gradient   dW = dyᵀ·x     a = dyᵀ,  b = x     (GPT-2's Conv1D: dW = xᵀ·dy)
//!
//! Paths:
//! - `generic` (portable Rust) and `avx2` (AVX2 + FMA; bf16 panels widened in registers by a
//!   16-bit shift): exact products of the operands as stored, f32 accumulation.
//! - `avx512`: as `avx2`, with f32 panels on 16-lane registers in 12 × 32 tiles
//!   (packed_linear/avx512.rs); bf16 panels and single rows keep the AVX2 loops.
//! - `avx512bf16`: a bf16 b is packed in k pairs and a rounded to bf16 once per call; VDPBF16PS
//!   multiplies the pairs, accumulating in f32 (packed_linear/avx512bf16.rs).
//! - `amx-bf16`: the same packing and rounding; TDPBF16PS on 16 × 32 tiles of a against 32 × 16
//!   tiles of b for 16 rows or more, after isa.rs's ARCH_REQ_XCOMP_PERM (packed_linear/amx.rs).
//!
//! On the two bf16 paths an f32 b keeps the exact f32 kernel (AVX-512), so an f32 model's
//! numbers never depend on the CPU beyond summation order. Every path is tested against
//! tests/gemm_paths.rs where the CPU has it.

pub mod isa;
pub mod peak;

pub use half::bf16;
pub use isa::Isa;

pub use crate::ops::packed_linear::PackedWeight;

/// A matrix's elements in their stored dtype.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl Data<'_> {
    pub fn len(&self) -> usize {
        match self {
            Data::F32(d) => d.len(),
            Data::Bf16(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A rows × cols matrix read in place: element (i, j) is data[i·rs + j·cs].
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: Data<'a>,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major matrix.
    pub fn row_major(data: Data<'a>, rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, read in place.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Panics unless every element lies inside the data (the kernels index it unchecked).
    pub(crate) fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "{} × {} matrix at strides ({}, {}) overruns its {} elements",
                self.rows,
                self.cols,
                self.rs,
                self.cs,
                self.data.len()
            );
        }
    }
}

/// c[m×n] += a[m×k]·b[k×n] on `path`, c row-major: b packed here, in its own dtype.
pub fn matmul_acc_on(path: Isa, a: MatRef, b: MatRef, c: &mut [f32]) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    PackedWeight::pack_on(path, b).matmul_acc_on(path, a, c);
}

/// c[m×n] += a[m×k]·b[k×n] in bf16 operands on `path`: b rounded to bf16 as it is packed
/// (whatever its dtype), a rounded too on the bf16 paths; f32 accumulation. Mixed-precision
/// training's products, as autocast computes them.
pub fn matmul_acc_bf16_on(path: Isa, a: MatRef, b: MatRef, c: &mut [f32]) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    PackedWeight::pack_rounded_on(path, b).matmul_acc_on(path, a, c);
}

/// `matmul_acc_bf16_on` the selected path.
pub fn matmul_acc_bf16(a: MatRef, b: MatRef, c: &mut [f32]) {
    matmul_acc_bf16_on(isa::gemm_path(), a, b, c)
}

/// `matmul_acc_on` the selected path.
pub fn matmul_acc(a: MatRef, b: MatRef, c: &mut [f32]) {
    matmul_acc_on(isa::gemm_path(), a, b, c)
}

/// The paths this CPU can run, lowest first, and a line for each other path saying why it is
/// skipped: what tests and benchmarks iterate over.
pub fn runnable_paths() -> (Vec<Isa>, Vec<String>) {
    let best = isa::features().best();
    let (mut run, mut skipped) = (vec![], vec![]);
    for path in Isa::ALL {
        if path > best {
            let lacks: Vec<_> = path
                .requires()
                .iter()
                .filter(|f| !isa::features().has(f))
                .copied()
                .collect();
            skipped.push(format!(
                "gemm path {path}: skipped (CPU lacks {})",
                lacks.join(", ")
            ));
        } else {
            run.push(path);
        }
    }
    (run, skipped)
}

/// What a bf16 product runs on `path`: the path, and on the bf16 paths how.
fn bf16_path(path: Isa) -> String {
    match path {
        Isa::AmxBf16 => "amx-bf16 (x rounded to bf16; avx512bf16 below 16 rows)".into(),
        Isa::Avx512Bf16 => "avx512bf16 (x rounded to bf16)".into(),
        p => p.to_string(),
    }
}

/// The kept-quantised products' kernels: int8 activations for few rows, bf16 tiles of the
/// dequantised weights for many (ops::quant::QuantActivations), unless DLM_QUANT_ACT forces one.
fn quant_path(path: Isa) -> String {
    use super::quant::{QuantActivations, QuantKernel, BF16_MIN_ROWS};
    let int8 = format!("{} (int8 activations)", QuantKernel::selected().name());
    match QuantActivations::forced() {
        Some(QuantActivations::Int8) => format!("{int8}, forced by DLM_QUANT_ACT"),
        Some(QuantActivations::F32) => "f32 activations, forced by DLM_QUANT_ACT".into(),
        Some(QuantActivations::Bf16) => {
            format!("bf16 tiles on {}, forced by DLM_QUANT_ACT", bf16_path(path))
        }
        None if path >= Isa::Avx2 => format!(
            "{int8} below {BF16_MIN_ROWS} rows; from {BF16_MIN_ROWS}, bf16 tiles on {}",
            bf16_path(path)
        ),
        None => int8,
    }
}

/// Which path each CPU kernel family runs now: (kernel, path), for `dlm info --system` and the
/// bench headers.
pub fn kernel_paths() -> Vec<(&'static str, String)> {
    let path = isa::gemm_path();
    let f32_linear = if path >= Isa::Avx512 {
        "avx512".to_string()
    } else if path >= Isa::Avx2 {
        "avx2".to_string()
    } else {
        "candle (gemm crate, its own dispatch)".into()
    };
    let simd = if isa::selected() >= Isa::Avx2 {
        "avx2 (loops compiled for AVX2 + FMA)"
    } else {
        "generic"
    };
    vec![
        ("linear, f32 weights, inference (packed)", f32_linear),
        (
            "linear, bf16 weights, inference (packed bf16)",
            bf16_path(path),
        ),
        ("linear, bf16 training (x·Wᵀ, dy·W, dyᵀ·x)", bf16_path(path)),
        (
            "linear, kept-quantised (Q8_0, Q4_0, Q4_1, Q4_K)",
            quant_path(path),
        ),
        (
            "attention products, bf16 inference",
            match path.bf16_products() {
                true => bf16_path(path),
                false => "candle (gemm crate, its own dispatch)".into(),
            },
        ),
        (
            "linear, f32 training; other attention products",
            "candle (gemm crate, its own dispatch)".into(),
        ),
        ("fused norms, softmax, activations, loss", simd.into()),
    ]
}
