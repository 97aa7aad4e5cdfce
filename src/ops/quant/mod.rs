//! Weights kept quantised in memory (GGUF's Q8_0, Q4_0, Q4_1, Q4_K blocks) and the product
//! y = x·Wᵀ computed from them without dequantising the matrix: each row of x is quantised to
//! int8 in 32-wide blocks, and every (x row, W row) pair is an integer dot product per block,
//! scaled and summed in f32 (as llama.cpp's CPU backend does). For many rows (a diffusion
//! step's canvas) the weight rows are instead dequantised to bf16 a tile at a time and multiplied
//! by the GEMM layer's bf16 kernel (AMX, AVX-512-BF16), whose dequantisation every row shares
//! (`QuantActivations::Bf16`). Inference only: nothing here carries a gradient.

mod blocks;
mod dot_avx2;
mod dot_scalar;
mod tile_avx2;
mod tile_vnni;

use std::sync::OnceLock;

use super::gemm::isa::{self, Isa};
use super::gemm::PackedWeight;
use super::packed_linear::Staged;
use super::team::{self, SharedMut};
use candle_core::{DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

pub use blocks::{dequantize, dequantize_block, quantize_block, QuantActs, QuantType, ACT_BLOCK};

/// Which dot-product kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKernel {
    /// Portable Rust (dot_scalar.rs).
    Scalar,
    /// AVX2 + FMA + F16C (dot_avx2.rs, tile_avx2.rs).
    Avx2,
    /// AVX-512 F/BW/VL + VNNI (tile_vnni.rs; Q4_K and single dot products take the AVX2 code).
    Avx512Vnni,
}

impl QuantKernel {
    pub const ALL: [QuantKernel; 3] = [Self::Scalar, Self::Avx2, Self::Avx512Vnni];

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => Self::Avx2.available() && tile_vnni::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 | Self::Avx512Vnni => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512-vnni",
        }
    }

    /// The kernel inference uses: the fastest at or below the CPU path `ops::gemm::isa` chose
    /// (so `DLM_CPU_ISA=avx2` forces the AVX2 one and `generic` the scalar one, as they do every
    /// kernel).
    pub fn selected() -> Self {
        Self::on_path(isa::selected())
    }

    /// The fastest kernel at or below `path`: VNNI from the AVX-512 paths on (every CPU with
    /// AVX-512-BF16 or AMX has it).
    pub fn on_path(path: Isa) -> Self {
        match path {
            Isa::Generic => Self::Scalar,
            Isa::Avx2 => Self::Avx2,
            _ if Self::Avx512Vnni.available() => Self::Avx512Vnni,
            _ => Self::Avx2,
        }
    }

    fn dot(self, ty: QuantType, w: &[u8], a: blocks::ActRow<'_>) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: callers reach Avx2 and Avx512Vnni (which implies AVX2) only through
            // `available()` (checked in `matmul_with`).
            Self::Avx2 | Self::Avx512Vnni => unsafe { dot_avx2::dot(ty, w, a) },
            _ => dot_scalar::dot(ty, w, a),
        }
    }
}

/// What the blocks are multiplied with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantActivations {
    /// Input rows quantised to int8 in 32-wide blocks, integer dot products (llama.cpp's way;
    /// the fast path for few rows: one decoded token).
    Int8,
    /// Input rows kept f32, each weight row dequantised once per call and multiplied in f32:
    /// the f32 model of the dequantised weights up to summation order, at more compute.
    F32,
    /// Weight rows dequantised to bf16 a tile of up to `BF16_TILE_ROWS` at a time, each tile packed
    /// and multiplied by the GEMM path's bf16 kernel (AMX or AVX-512-BF16 tiles, x rounded to
    /// bf16; exact f32 products of the bf16 weights below those paths). The fast path for many
    /// rows (a diffusion step's canvas, a prompt), where the dequantisation is shared by them.
    Bf16,
}

/// Fewest input rows for which `QuantActivations::for_rows` picks the bf16 tiles: below them
/// the int8 kernel measured faster, a tile's dequantisation being shared by too few rows
/// (SmolLM2 Q4_0 prefill on AMX: 32 rows 89 ms int8 / 128 ms tiles, 64 rows 144 / 142, 128 rows
/// 292 / 179).
pub const BF16_MIN_ROWS: usize = 64;

/// Most weight rows one task dequantises, packs and multiplies at a time: eight of AMX's
/// 32-column blocks, 2 MB of bf16 at a 7B model's width. A narrow matrix takes smaller tiles
/// (`bf16_tile_rows`) so that every thread has some.
const BF16_TILE_ROWS: usize = 256;

/// Rows per tile for `n` weight rows: at least two tiles a thread where `n` allows, in whole
/// 32-row AMX blocks, at most `BF16_TILE_ROWS`.
fn bf16_tile_rows(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    n.div_ceil(2 * threads)
        .next_multiple_of(32)
        .clamp(32, BF16_TILE_ROWS)
}

impl QuantActivations {
    pub const ALL: [QuantActivations; 3] = [Self::Int8, Self::F32, Self::Bf16];

    /// What `DLM_QUANT_ACT` forces (`int8`, `f32` or `bf16`; read once), if anything.
    pub fn forced() -> Option<Self> {
        static CHOICE: OnceLock<Option<QuantActivations>> = OnceLock::new();
        *CHOICE.get_or_init(|| match std::env::var("DLM_QUANT_ACT").as_deref() {
            Ok("f32") => Some(Self::F32),
            Ok("int8") => Some(Self::Int8),
            Ok("bf16") => Some(Self::Bf16),
            _ => None,
        })
    }

    /// The choice for a product of `m` input rows: the forced one, else the bf16 tiles from
    /// `BF16_MIN_ROWS` rows on the packed kernels' paths (at M = 256 on SmolLM2's shapes they
    /// measured 3.7-5.6× the int8 kernel on AMX and 1.3-1.5× on AVX2), else int8.
    pub fn for_rows(m: usize) -> Self {
        Self::forced().unwrap_or(match m >= BF16_MIN_ROWS && isa::gemm_path() >= Isa::Avx2 {
            true => Self::Bf16,
            false => Self::Int8,
        })
    }

    /// The choice for a single row (one decoded token).
    pub fn selected() -> Self {
        Self::for_rows(1)
    }
}

/// One call of a tiled int8 kernel (tile_avx2.rs, tile_vnni.rs): weight rows `rb` bytes apart
/// from `w` (`nw` of them), the activations (`m` rows of `nb` blocks), the output (rows `ldo`
/// floats apart).
struct TileJob<'a> {
    w: *const u8,
    rb: usize,
    nw: usize,
    nb: usize,
    m: usize,
    acts: &'a QuantActs,
    out: *mut f32,
    ldo: usize,
}

impl<'a> TileJob<'a> {
    /// The operands of out[i·ldo + j] = x row i · w row j for the whole weight rows `w` of `ty`
    /// and every row of `acts`; panics if `out` is too small.
    fn new(ty: QuantType, w: &[u8], acts: &'a QuantActs, out: &mut [f32], ldo: usize) -> Self {
        let rb = ty.row_bytes(acts.cols);
        let (nw, m) = (w.len() / rb, acts.rows());
        assert!(ldo >= nw && out.len() >= m.saturating_sub(1) * ldo + nw);
        Self {
            w: w.as_ptr(),
            rb,
            nw,
            nb: acts.cols / ACT_BLOCK,
            m,
            acts,
            out: out.as_mut_ptr(),
            ldo,
        }
    }
}

/// y [m, n] from per-task products: `parts[c]` is [m, nw] for output columns c·per..c·per + nw.
fn join_columns<'a>(
    parts: impl IntoIterator<Item = &'a [f32]>,
    m: usize,
    n: usize,
    per: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for (c, part) in parts.into_iter().enumerate() {
        let nw = part.len() / m.max(1);
        for (yr, pr) in y.chunks_exact_mut(n).zip(part.chunks_exact(nw.max(1))) {
            yr[c * per..c * per + nw].copy_from_slice(pr);
        }
    }
    y
}

crate::ops::cpu::simd_fn! {
    /// `dequantize_row` compiled for the vector units this CPU has (`cpu::simd`'s closure
    /// stayed out of line, in SSE code).
    fn dequantize_row_on(ty: QuantType, w: &[u8], vals: &mut [f32]) = dequantize_row;
}

/// The blocks `w` of one row into `vals`.
#[inline(always)]
fn dequantize_row(ty: QuantType, w: &[u8], vals: &mut [f32]) {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    for (b, v) in w.chunks_exact(bb).zip(vals.chunks_exact_mut(be)) {
        blocks::dequantize_block_into(ty, b, v);
    }
}

/// A `[rows, cols]` weight (rows = outputs) kept as its blocks: a U8 tensor `[rows, row_bytes]`,
/// so that it is stored, shared and saved like any other tensor.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    pub ty: QuantType,
    pub rows: usize,
    pub cols: usize,
    blocks: Tensor,
}

/// Runs `f` on the blocks' bytes of every weight in `weights`.
fn with_all_bytes<R>(weights: &[&QuantMatrix], f: impl FnOnce(&[&[u8]]) -> Result<R>) -> Result<R> {
    let held: Vec<_> = weights
        .iter()
        .map(|w| w.blocks.storage_and_layout())
        .collect();
    let bytes = held
        .iter()
        .map(|(storage, layout)| match &**storage {
            Storage::Cpu(s) => crate::ops::cpu::slice::<u8>(s, layout),
            _ => Err(bail_shape("blocks are not on the CPU")),
        })
        .collect::<Result<Vec<_>>>()?;
    f(&bytes)
}

fn bail_shape(what: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("quantised weight: {what}"))
}

impl QuantMatrix {
    /// Wraps a U8 tensor `[rows, row_bytes]` of `ty` blocks holding a `[rows, cols]` matrix.
    pub fn from_blocks(ty: QuantType, blocks: Tensor, rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(ty.block_elems()) || cols == 0 {
            return Err(bail_shape(format!(
                "{cols} columns are not a multiple of the {} block size {}",
                ty.name(),
                ty.block_elems()
            )));
        }
        let want = [rows, ty.row_bytes(cols)];
        if blocks.dtype() != DType::U8 || blocks.dims() != want || !blocks.device().is_cpu() {
            return Err(bail_shape(format!(
                "{} blocks of a [{rows}, {cols}] matrix must be a U8 CPU tensor {want:?}, got {:?} {:?}",
                ty.name(),
                blocks.dtype(),
                blocks.dims()
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            blocks: blocks.contiguous()?,
        })
    }

    /// Quantises a row-major `[rows, cols]` f32 matrix (Q8_0, Q4_0 or Q4_1).
    pub fn quantize(ty: QuantType, w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if ty == QuantType::Q4K {
            return Err(bail_shape("dlm reads Q4_K but does not write it"));
        }
        if w.len() != rows * cols || !cols.is_multiple_of(ty.block_elems()) {
            return Err(bail_shape(format!(
                "cannot quantise {} values as [{rows}, {cols}] in blocks of {}",
                w.len(),
                ty.block_elems()
            )));
        }
        let mut bytes = Vec::with_capacity(rows * ty.row_bytes(cols));
        for b in w.chunks_exact(ty.block_elems()) {
            quantize_block(ty, b, &mut bytes);
        }
        let blocks =
            Tensor::from_vec(bytes, (rows, ty.row_bytes(cols)), &candle_core::Device::Cpu)?;
        Self::from_blocks(ty, blocks, rows, cols)
    }

    /// The blocks, U8 `[rows, row_bytes]`.
    pub fn blocks(&self) -> &Tensor {
        &self.blocks
    }

    /// Runs `f` on the blocks' bytes.
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
        with_all_bytes(&[self], |bytes| f(bytes[0]))
    }

    /// The matrix in f32, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        self.with_bytes(|b| {
            Ok(dequantize(self.ty, b).expect("whole blocks, checked at construction"))
        })
    }

    /// The matrix as a `[rows, cols]` tensor of `dtype`. A bf16 one is dequantised a row at a
    /// time, never through a whole f32 copy: a kept-quantised 8B model's embedding table is 1 GB
    /// in bf16 and would pass through 2 GB of f32 at load.
    pub fn dequantize_as(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        if dtype != DType::BF16 {
            return Tensor::from_vec(self.dequantize()?, (self.rows, self.cols), device)?
                .to_dtype(dtype);
        }
        let rb = self.ty.row_bytes(self.cols);
        let table = self.with_bytes(|bytes| {
            let mut table = vec![half::bf16::ZERO; self.rows * self.cols];
            table
                .par_chunks_mut(self.cols)
                .zip(bytes.par_chunks(rb))
                .for_each(|(out, w)| {
                    // SAFETY: `half::bf16` is `repr(transparent)` over its u16 bits.
                    let bits = unsafe {
                        std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u16>(), out.len())
                    };
                    self.row_bf16(w, bits)
                });
            Ok(table)
        })?;
        Tensor::from_vec(table, (self.rows, self.cols), device)
    }

    /// y = x·Wᵀ for `x` row-major `[m, cols]`: `[m, rows]`, on the given kernel and activations.
    pub fn matmul_with(
        &self,
        kernel: QuantKernel,
        activations: QuantActivations,
        x: &[f32],
        m: usize,
    ) -> Result<Vec<f32>> {
        let mut ys = Self::matmul_many(kernel, activations, &[self], x, m)?;
        Ok(ys.pop().expect("one product per weight"))
    }

    /// y_i = x·W_iᵀ for several weights of x's width (a layer's q, k and v; its gate and up):
    /// x quantised once, and the weight rows of all of them dealt out in one parallel op.
    pub fn matmul_many(
        kernel: QuantKernel,
        activations: QuantActivations,
        weights: &[&QuantMatrix],
        x: &[f32],
        m: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let Some(cols) = weights.first().map(|w| w.cols) else {
            return Ok(vec![]);
        };
        if let Some(w) = weights.iter().find(|w| w.cols != cols) {
            return Err(bail_shape(format!(
                "products of one input with weights of {cols} and {} columns",
                w.cols
            )));
        }
        if x.len() != m * cols {
            return Err(bail_shape(format!(
                "input of {} values is not [{m}, {cols}]",
                x.len()
            )));
        }
        if !kernel.available() {
            return Err(bail_shape(format!(
                "this CPU lacks the {} kernel",
                kernel.name()
            )));
        }
        let acts = match activations {
            // The 4-bit VNNI kernel's quad order made here, before the parallel op (made by its
            // first task, the others would wait for it).
            QuantActivations::Int8
                if kernel == QuantKernel::Avx512Vnni
                    && weights
                        .iter()
                        .any(|w| matches!(w.ty, QuantType::Q4_0 | QuantType::Q4_1)) =>
            {
                Some(QuantActs::with_quads(x, cols))
            }
            QuantActivations::Int8 => Some(QuantActs::new(x, cols)),
            QuantActivations::F32 => None,
            QuantActivations::Bf16 => {
                return weights
                    .iter()
                    .map(|w| w.matmul_bf16_on(isa::gemm_path(), x, m))
                    .collect()
            }
        };
        // Weight rows in chunks small enough to stay in L1 while every x row passes over them,
        // whole tiles of three (tile_avx2.rs) or four rows (tile_vnni.rs) where there are enough.
        // A row or two of x (decoding) uses each weight once: one contiguous share per thread
        // streams faster than chunks dealt out in turn (+7-10% tokens/s measured).
        let threads = rayon::current_num_threads().max(1);
        let chunk_rows = |n: usize| {
            match m {
                0..=2 => n.div_ceil(threads),
                _ => n.div_ceil(4 * threads).clamp(1, 60),
            }
            .next_multiple_of(12)
        };
        let chunks: Vec<usize> = weights.iter().map(|w| chunk_rows(w.rows)).collect();
        // Chunk c of weight i writes its outputs, [m, rows of c], at m·chunk·c of out[i]: for
        // m = 1 that is already y.
        let mut outs: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; m * w.rows]).collect();
        let tasks: Vec<(usize, usize)> = (0..weights.len())
            .flat_map(|i| (0..weights[i].rows.div_ceil(chunks[i])).map(move |c| (i, c)))
            .collect();
        let shared: Vec<SharedMut<f32>> = outs.iter_mut().map(|o| SharedMut::new(o)).collect();
        with_all_bytes(weights, |bytes| {
            team::for_each(tasks.len(), |t| {
                let ((i, c), w) = (tasks[t], weights[tasks[t].0]);
                let (chunk, rb) = (chunks[i], w.ty.row_bytes(cols));
                let rows = &bytes[i][c * chunk * rb..((c + 1) * chunk).min(w.rows) * rb];
                let nw = rows.len() / rb;
                // SAFETY: chunk c's own range of out[i], which outlives the op.
                let out = unsafe { shared[i].part(m * chunk * c, m * nw) };
                w.rows_product(kernel, acts.as_ref(), rows, x, out);
            });
            Ok(())
        })?;
        Ok(outs
            .into_iter()
            .zip(weights.iter().zip(chunks))
            .map(|(y, (w, chunk))| match m {
                1 => y,
                _ => join_columns(y.chunks(m * chunk), m, w.rows, chunk),
            })
            .collect())
    }

    /// `out[i, j]` = x row i · W row j for the whole weight rows `w` (`out`: [m, rows of w]), on
    /// `kernel` with the int8 activations `acts`, or f32 x where there are none.
    fn rows_product(
        &self,
        kernel: QuantKernel,
        acts: Option<&QuantActs>,
        w: &[u8],
        x: &[f32],
        out: &mut [f32],
    ) {
        let rb = self.ty.row_bytes(self.cols);
        let nw = w.len() / rb;
        match acts {
            #[cfg(target_arch = "x86_64")]
            Some(acts) if kernel == QuantKernel::Avx512Vnni && tile_vnni::tiled(self.ty) => {
                // SAFETY: the kernel's availability was checked by the caller; whole rows.
                unsafe { tile_vnni::product(self.ty, w, acts, out, nw) }
            }
            #[cfg(target_arch = "x86_64")]
            Some(acts) if kernel != QuantKernel::Scalar && tile_avx2::tiled(self.ty) => {
                // SAFETY: the kernel's availability was checked by the caller; whole rows.
                unsafe { tile_avx2::product(self.ty, w, acts, out, nw) }
            }
            Some(acts) => {
                for (i, o) in out.chunks_exact_mut(nw).enumerate() {
                    let a = acts.row(i);
                    for (y, wr) in o.iter_mut().zip(w.chunks_exact(rb)) {
                        *y = kernel.dot(self.ty, wr, a);
                    }
                }
            }
            None => self.f32_rows(kernel, w, x, out),
        }
    }

    /// y = x·Wᵀ for `x` row-major `[m, cols]` by `path`'s packed bf16 kernel: in parallel
    /// tasks, each dequantises a tile of weight rows (`bf16_tile_rows`) to bf16, packs them for `path` and
    /// multiplies every row of x with them (x rounded to bf16 on the bf16 paths). Never more
    /// than a tile per task of the matrix exists in bf16.
    pub fn matmul_bf16_on(&self, path: Isa, x: &[f32], m: usize) -> Result<Vec<f32>> {
        use crate::ops::gemm::{Data, MatRef};
        if x.len() != m * self.cols {
            return Err(bail_shape(format!(
                "input of {} values is not [{m}, {}]",
                x.len(),
                self.cols
            )));
        }
        if !crate::ops::packed_linear::runnable(path) {
            return Err(bail_shape(format!("this CPU lacks the {path} gemm path")));
        }
        let (n, k, rb) = (self.rows, self.cols, self.ty.row_bytes(self.cols));
        let x = MatRef::row_major(Data::F32(x), m, k);
        let tile_rows = bf16_tile_rows(n);
        let staged = Staged::new(path, x);
        let parts: Vec<Vec<f32>> = self.with_bytes(|bytes| {
            Ok(bytes
                .par_chunks(tile_rows * rb)
                .map(|w| {
                    let nw = w.len() / rb;
                    let packed = PackedWeight::from_bf16_rows_on(path, nw, k, |j, out| {
                        self.row_bf16(&w[j * rb..(j + 1) * rb], out)
                    });
                    let mut out = vec![0f32; m * nw];
                    packed.matmul_acc_staged_on(path, x, &staged, &mut out);
                    out
                })
                .collect())
        })?;
        Ok(join_columns(
            parts.iter().map(Vec::as_slice),
            m,
            n,
            tile_rows,
        ))
    }

    /// One weight row's blocks `w` dequantised into `out` (`cols` long) as bf16 bits: each
    /// value the f32 dequantisation rounded to nearest even, the row at once (through a
    /// per-thread f32 row).
    fn row_bf16(&self, w: &[u8], out: &mut [u16]) {
        thread_local! {
            static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        ROW.with_borrow_mut(|vals| {
            vals.resize(self.cols, 0.0);
            dequantize_row_on(self.ty, w, vals);
            crate::ops::packed_linear::round_to_bf16(vals, out);
        })
    }

    /// `out[i, j]` = x row i · W row j for the weight rows `w`, each dequantised once.
    fn f32_rows(&self, kernel: QuantKernel, w: &[u8], x: &[f32], out: &mut [f32]) {
        let rb = self.ty.row_bytes(self.cols);
        let nw = w.len() / rb;
        let mut work = move || {
            let mut row = Vec::with_capacity(self.cols);
            for (j, wr) in w.chunks_exact(rb).enumerate() {
                row.clear();
                for b in wr.chunks_exact(self.ty.block_bytes()) {
                    dequantize_block(self.ty, b, &mut row);
                }
                for (i, xr) in x.chunks_exact(self.cols).enumerate() {
                    out[i * nw + j] = crate::ops::cpu::dot(&row, xr);
                }
            }
        };
        match kernel {
            QuantKernel::Scalar => work(),
            _ => crate::ops::cpu::simd(work),
        }
    }

    /// x [..., cols] → x·Wᵀ (+ bias) [..., rows] in x's dtype, on the selected kernel. Refuses
    /// an x that carries a gradient: quantised weights are for inference only.
    pub fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let mut ys = Self::forward_many(&[(self, bias)], x)?;
        Ok(ys.pop().expect("one output per weight"))
    }

    /// `forward` of one x through several weights (each with its bias), x quantised once and
    /// the products one parallel op (`matmul_many`).
    pub fn forward_many(
        weights: &[(&QuantMatrix, Option<&Tensor>)],
        x: &Tensor,
    ) -> Result<Vec<Tensor>> {
        if x.track_op() {
            return Err(bail_shape(
                "no gradient flows through kept-quantised weights; train from a float \
                 checkpoint (dlm convert --model DIR --out DIR2 dequantises)",
            ));
        }
        if !x.device().is_cpu() {
            return Err(bail_shape("kept-quantised weights run on the CPU only"));
        }
        let Some(&cols) = x.dims().last() else {
            return Err(bail_shape("a scalar input"));
        };
        if let Some((w, _)) = weights.iter().find(|(w, _)| w.cols != cols) {
            return Err(bail_shape(format!(
                "input {:?} does not end in the weight's {} columns",
                x.dims(),
                w.cols
            )));
        }
        let m = x.elem_count() / cols.max(1);
        let matrices: Vec<&QuantMatrix> = weights.iter().map(|(w, _)| *w).collect();
        let xf = x.to_dtype(DType::F32)?;
        let ys = crate::ops::cpu::with_data(&xf, |x| {
            let activations = QuantActivations::for_rows(m);
            Self::matmul_many(QuantKernel::selected(), activations, &matrices, x, m)
        })?;
        ys.into_iter()
            .zip(weights)
            .map(|(mut y, (w, bias))| {
                if let Some(b) = bias {
                    crate::ops::cpu::with_data(&b.to_dtype(DType::F32)?, |b| {
                        for row in y.chunks_exact_mut(w.rows) {
                            row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                        }
                        Ok(())
                    })?;
                }
                let mut dims = x.dims().to_vec();
                *dims.last_mut().expect("checked above") = w.rows;
                Tensor::from_vec(y, dims, x.device())?.to_dtype(x.dtype())
            })
            .collect()
    }
}
