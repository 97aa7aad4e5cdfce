//! The packed GEMM: c = a·b (+ c) with b packed into panels, once for a model's weights (the
//! weights of a model that is only being run never change, so a general GEMM's per-call repack
//! is wasted) or per call for training's operands (gemm/mod.rs).
//!
//! b [k × n] is packed into panels of 16 output columns, each panel `k` lines of 16 elements:
//! f32 (one 64-byte cache line) or bf16 (32 bytes, so a bf16 model's packed weights take half the
//! memory, and are widened to f32 in registers). The microkernel keeps a 6 × 16 tile of c in
//! twelve AVX2 registers and, per k, loads one line and broadcasts six elements of a: twelve FMAs
//! per line, so the loop is bound by FMA throughput. a is read in place when it is row-major f32;
//! otherwise (bf16, or transposed for a weight gradient) each task stages the row block it is
//! working on (at most `MC` rows) into an f32 buffer once, for all its panels.
//!
//! Blocking: each rayon task owns a run of panels; within one, a panel's k-block (at most
//! `KC` lines) stays in L1 while every row block of a passes it, and the rows of a in use
//! (at most `MC` of them) stay in L2.
//!
//! On the bf16 paths (`avx512bf16`, `amx-bf16`) a bf16 b is packed in pairs of k instead
//! (`LinePair`: 16 columns × 2 k, 64 bytes, the "VNNI" layout that VDPBF16PS and TDPBF16PS read),
//! its depth padded with zeros to a multiple of 32, and a is rounded to bf16 once per call
//! (`stage_pairs`) and multiplied in bf16 with f32 accumulation: autocast's arithmetic. An f32 b
//! keeps the exact f32 kernel on every path.

use std::ops::Range;
use std::sync::Arc;

use half::bf16;
use rayon::prelude::*;

use super::gemm::isa::{self, Isa};
use super::gemm::{Data, MatRef};
use super::team::SharedMut;

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
mod generic;
mod greedy;
#[cfg(target_arch = "x86_64")]
mod pairs;

pub use greedy::Greedy;

/// Output columns per panel (two AVX2 vectors).
const NR: usize = 16;
/// Rows of a per microkernel tile.
const MR: usize = 6;
/// Rows of a per L2 block, and the largest k-block: a 16 KiB k-block of a panel stays in L1.
const MC: usize = 288;
const KC: usize = 256;
/// Panels a row tile meets in turn: 256 columns, whose k-blocks (256 KiB) stay in L2.
const GROUP: usize = 16;
/// The depth of a pair-packed panel is padded to a multiple of this (one AMX tile's 32 k).
const PAIR_K: usize = 32;
/// Rows of a staged for the pair kernels are padded to a multiple of this (one AMX tile).
const PAIR_ROWS: usize = 16;
/// Columns of b (rows of a transposed a) one task of the register packing reads from each line
/// of its source: four cache lines in a row, which the prefetchers follow where one line at a
/// large stride leaves every read a miss.
const RUN: usize = 64;

/// One line of a panel: the 16 columns' elements at one k.
pub(crate) trait Line: Copy + Send + Sync + 'static + Load {
    type Elem: Copy + Send + Sync;
    const ZERO: Self;
    /// Sets column c (0..16) of the line.
    fn set(&mut self, c: usize, v: Self::Elem);
    /// The 16 columns as f32, in order.
    fn widen(&self) -> [f32; NR];
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct LineF32([f32; NR]);

/// 16 bf16 columns, ordered so that each 32-bit word holds column j in its low half and column
/// 8 + j in its high half: a shift left by 16 gives columns 0..8 as f32, a mask columns 8..16.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct LineBf16([u16; NR]);

impl Line for LineF32 {
    type Elem = f32;
    const ZERO: Self = Self([0.0; NR]);

    fn set(&mut self, c: usize, v: f32) {
        self.0[c] = v;
    }

    fn widen(&self) -> [f32; NR] {
        self.0
    }
}

impl Line for LineBf16 {
    type Elem = bf16;
    const ZERO: Self = Self([0; NR]);

    fn set(&mut self, c: usize, v: bf16) {
        self.0[if c < 8 { 2 * c } else { 2 * (c - 8) + 1 }] = v.to_bits();
    }

    fn widen(&self) -> [f32; NR] {
        std::array::from_fn(|c| {
            let i = if c < 8 { 2 * c } else { 2 * (c - 8) + 1 };
            f32::from_bits((self.0[i] as u32) << 16)
        })
    }
}

/// 16 bf16 columns at two consecutive k (2q, 2q + 1): element (column c, k 2q + t) is at 2c + t,
/// so each 32-bit word is one column's pair, as VDPBF16PS and AMX's B tiles read them.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct LinePair([u16; 2 * NR]);

enum Lines {
    F32(Vec<LineF32>),
    Bf16(Vec<LineBf16>),
    /// k-pair lines; each panel holds `padded_k / 2` of them.
    Pairs(Vec<LinePair>),
}

/// b [k × n] in the microkernel's layout: panel p holds columns 16p..16p+16 (zero past n), as k
/// lines, in b's own dtype.
pub struct PackedWeight {
    lines: Lines,
    n: usize,
    k: usize,
}

/// k rounded up to the pair layout's depth.
fn padded_k(k: usize) -> usize {
    k.div_ceil(PAIR_K).max(1) * PAIR_K
}

/// x as the kernels of one packing read it: rounded to bf16 for a pair packing (`stage_pairs`),
/// else nothing (the other kernels read f32 rows in place or stage them per row block).
pub struct Staged(Option<Vec<u16>>);

impl Staged {
    /// x staged for weights packed in bf16 for `path` (`PackedWeight::from_bf16_rows_on`).
    pub fn new(path: Isa, x: MatRef) -> Self {
        x.check();
        Self(path.bf16_products().then(|| stage_pairs(x)))
    }
}

/// Whether this CPU can run `path`.
pub fn runnable(path: Isa) -> bool {
    path <= isa::features().best()
}

/// Whether an f32 weight takes the packed kernel: on the AVX2 path. Below it candle's GEMM (the
/// `gemm` crate, which dispatches on its own) beats the portable kernel; bf16 weights take the
/// packed kernel on every path, since the alternative widens them to f32 on every call.
pub fn f32_fast() -> bool {
    isa::gemm_path() >= Isa::Avx2
}

impl PackedWeight {
    /// Packs b [k × n], read through its strides, in its own dtype, for the selected path.
    pub fn pack(b: MatRef) -> Self {
        Self::pack_on(isa::gemm_path(), b)
    }

    /// Packs b for `path`'s kernels: a bf16 b in k pairs on the bf16 paths, else in lines.
    pub fn pack_on(path: Isa, b: MatRef) -> Self {
        b.check();
        let (k, n) = (b.rows, b.cols);
        let lines = match b.data {
            Data::F32(d) => Lines::F32(pack_lines(d, b, |v| v)),
            Data::Bf16(d) if path.bf16_products() => Lines::Pairs(pack_pairs(d, b, bf16::to_bits)),
            Data::Bf16(d) => Lines::Bf16(pack_lines(d, b, |v| v)),
        };
        Self { lines, n, k }
    }

    /// Packs b rounded to bf16 (round to nearest even) whatever its dtype, for a product in
    /// bf16 operands (mixed-precision training): in k pairs on the bf16 paths, else in bf16 lines.
    pub fn pack_rounded_on(path: Isa, b: MatRef) -> Self {
        let Data::F32(d) = b.data else {
            return Self::pack_on(path, b);
        };
        b.check();
        let lines = match path.bf16_products() {
            true => Lines::Pairs(pack_pairs_rounded(d, b)),
            false => Lines::Bf16(pack_lines(d, b, bf16::from_f32)),
        };
        Self {
            lines,
            n: b.cols,
            k: b.rows,
        }
    }

    /// Packs a weight of `n` output columns and `k` inputs stored [n, k] (`transposed` = false,
    /// HF `nn.Linear`) or [k, n] (true, GPT-2's `Conv1D`), so that y = x·packed is x·Wᵀ.
    pub fn new(w: Data, n: usize, k: usize, transposed: bool) -> Self {
        Self::new_on(isa::gemm_path(), w, n, k, transposed)
    }

    /// `new`, packed for `path`'s kernels.
    pub fn new_on(path: Isa, w: Data, n: usize, k: usize, transposed: bool) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "weight of {} elements is not {n} × {k}",
            w.len()
        );
        let (rs, cs) = if transposed { (n, 1) } else { (1, k) };
        Self::pack_on(
            path,
            MatRef {
                data: w,
                rows: k,
                cols: n,
                rs,
                cs,
            },
        )
    }

    /// Packs a weight of `n` output columns and `k` inputs from its rows as bf16 bits, for
    /// `path`: `row(j, out)` writes row j's k values into `out`. Each panel's 16 rows are
    /// written into a per-thread buffer and spread from there into the panel's lines, so no
    /// [n, k] copy of the weight exists (kept-quantised weights dequantised a tile at a time).
    pub fn from_bf16_rows_on(
        path: Isa,
        n: usize,
        k: usize,
        row: impl Fn(usize, &mut [u16]) + Sync,
    ) -> Self {
        let panels = n.div_ceil(NR);
        let lines = if path.bf16_products() {
            let per_panel = padded_k(k) / 2;
            // A panel's rows are dequantised into a 16-row buffer (in L2), then its lines
            // written whole in order: spreading each row into the lines as it came would pass
            // over the whole panel (128 KB at k = 4096) once per row, a word at a time.
            let ld = 2 * k.div_ceil(2);
            let mut lines = vec![LinePair([0; 2 * NR]); panels * per_panel];
            lines.par_chunks_mut(per_panel).enumerate().for_each_init(
                || vec![0u16; NR * ld],
                |buf, (p, panel)| {
                    let rows = p * NR..((p + 1) * NR).min(n);
                    let count = rows.len();
                    for (c, j) in rows.enumerate() {
                        // buf[c·ld + k] stays zero for an odd k.
                        row(j, &mut buf[c * ld..c * ld + k]);
                    }
                    // Column c's pair (2q, 2q + 1) is word c of line q.
                    for (q, line) in panel.iter_mut().take(ld / 2).enumerate() {
                        for c in 0..count {
                            line.0[2 * c] = buf[c * ld + 2 * q];
                            line.0[2 * c + 1] = buf[c * ld + 2 * q + 1];
                        }
                    }
                },
            );
            Lines::Pairs(lines)
        } else {
            let mut lines = vec![LineBf16::ZERO; panels * k];
            lines.par_chunks_mut(k.max(1)).enumerate().for_each_init(
                || vec![0u16; k],
                |buf, (p, panel)| {
                    for (c, j) in (p * NR..((p + 1) * NR).min(n)).enumerate() {
                        row(j, buf);
                        for (line, &v) in panel.iter_mut().zip(buf.iter()) {
                            line.set(c, bf16::from_bits(v));
                        }
                    }
                },
            );
            Lines::Bf16(lines)
        };
        Self { lines, n, k }
    }

    /// Bytes the packed panels take.
    pub fn bytes(&self) -> usize {
        match &self.lines {
            Lines::F32(l) => std::mem::size_of_val(&l[..]),
            Lines::Bf16(l) => std::mem::size_of_val(&l[..]),
            Lines::Pairs(l) => std::mem::size_of_val(&l[..]),
        }
    }

    /// Whether `path` can run on this packing: pairs need a bf16 path, and a bf16 path packs
    /// bf16 in pairs.
    fn suits(&self, path: Isa) -> bool {
        match self.lines {
            Lines::F32(_) => true,
            Lines::Bf16(_) => !path.bf16_products(),
            Lines::Pairs(_) => path.bf16_products(),
        }
    }

    /// Panics unless `path` runs on this CPU and on this packing.
    fn check_path(&self, path: Isa) {
        assert!(runnable(path), "gemm path {path} cannot run on this CPU");
        assert!(
            self.suits(path),
            "gemm path {path} cannot run a weight packed for another path (PackedWeight::pack_on)"
        );
    }

    /// For a pair packing, all of x rounded to bf16 once for the call (`stage_pairs`); None
    /// for the others, whose kernels read f32 rows in place or staged per row block (`rows_f32`).
    fn stage_all(&self, x: MatRef) -> Option<Vec<u16>> {
        matches!(self.lines, Lines::Pairs(_)).then(|| stage_pairs(x))
    }

    /// y[m × n] += x[m × k] · b on the selected path, y row-major (holding the bias, or zeros).
    pub fn matmul_acc(&self, x: MatRef, y: &mut [f32]) {
        self.matmul_acc_on(isa::gemm_path(), x, y)
    }

    /// `matmul_acc` on a given path, which this CPU must be able to run.
    pub fn matmul_acc_on(&self, path: Isa, x: MatRef, y: &mut [f32]) {
        x.check();
        self.matmul_acc_staged_on(path, x, &Staged(self.stage_all(x)), y)
    }

    /// `matmul_acc_on` with x already staged by `Staged::new` for `path`: several weights
    /// multiplied by the same x (kept-quantised tiles) stage it once.
    pub fn matmul_acc_staged_on(&self, path: Isa, x: MatRef, staged: &Staged, y: &mut [f32]) {
        self.check_path(path);
        let (m, n) = (x.rows, self.n);
        x.check();
        assert!(x.cols == self.k && y.len() >= m * n, "matmul_acc: shapes");
        assert_eq!(
            staged.0.is_some(),
            matches!(self.lines, Lines::Pairs(_)),
            "x staged for another packing"
        );
        let staged = staged.0.as_deref();
        let y = SharedMut::new(y);
        self.per_task(m, |panels| {
            let mut scratch = vec![];
            for i0 in (0..m).step_by(MC) {
                let i1 = (i0 + MC).min(m);
                let a = self.rows(x, staged, i0..i1, &mut scratch);
                for p0 in panels.clone().step_by(GROUP) {
                    let group = p0..(p0 + GROUP).min(panels.end);
                    let out = y.ptr(i0 * n + p0 * NR);
                    // SAFETY: this task alone writes the columns of its panels (the tasks'
                    // panel ranges are disjoint); rows i0..i1 lie inside y.
                    unsafe { self.panels_into(path, a, group, i1 - i0, out, n) }
                }
            }
        });
    }

    /// Runs `task` on disjoint runs of panels in parallel (about four per thread), returning
    /// their results in panel order.
    fn per_task<R: Send>(&self, m: usize, task: impl Fn(Range<usize>) -> R + Sync) -> Vec<R> {
        if m == 0 || self.n == 0 {
            return vec![];
        }
        let panels = self.n.div_ceil(NR);
        let threads = rayon::current_num_threads().max(1);
        let per_task = panels.div_ceil(4 * threads).max(1);
        super::team::map(panels.div_ceil(per_task), |t| {
            task(t * per_task..((t + 1) * per_task).min(panels))
        })
    }

    /// out[rows × 16·|panels|] += x[rows] · panels, over every k-block, with `out` of row stride
    /// `ldc`. Within a k-block each 6-row tile of x meets every panel of the group in turn, so
    /// out is written in runs of up to 16·|panels| columns per row (a single 16-column strip
    /// of a wide output would touch one cache line per row, each in another page).
    ///
    /// # Safety
    /// `runnable(path)`; `x` = (pointer, row stride) addresses `rows` rows of k f32s (from
    /// `rows_f32`); `out` addresses `rows` rows of `ldc` floats, the first
    /// min(16·|panels|, n − 16·panels.start) of each written by no one else meanwhile.
    unsafe fn panels_into(
        &self,
        path: Isa,
        a: Rows,
        panels: Range<usize>,
        rows: usize,
        out: *mut f32,
        ldc: usize,
    ) {
        let k = self.k;
        let cols = (self.n - panels.start * NR).min(panels.len() * NR);
        let (a, lda) = match (a, &self.lines) {
            (Rows::Bf16(a, lda), Lines::Pairs(l)) => {
                let stride = padded_k(k) / 2;
                let panel = (l[panels.start * stride..].as_ptr(), stride);
                return pair_strip(path, (a, lda), panel, (stride, rows, cols), out, ldc);
            }
            (Rows::F32(a, lda), _) => (a, lda),
            _ => unreachable!("rows staged for another packing"),
        };
        // k-blocks keep a panel's lines in L1 for the rows after the first; a single row reuses
        // nothing, and reads each panel straight through instead.
        let kc = match rows {
            1 => k.max(1),
            _ => k.div_ceil(k.div_ceil(KC).max(1)).max(1),
        };
        for q0 in (0..k).step_by(kc) {
            let q1 = (q0 + kc).min(k);
            let a = a.wrapping_add(q0);
            let at = panels.start * k + q0;
            let dims = (q1 - q0, rows, cols);
            match &self.lines {
                #[cfg(target_arch = "x86_64")]
                // One row keeps the AVX2 kernel's one-row loop (four accumulator pairs).
                Lines::F32(l) if path >= Isa::Avx512 && rows > 1 => {
                    let (kc, rows, cols) = dims;
                    let panel = (l[at..].as_ptr(), k);
                    avx512::strip(a, lda, panel, kc, out, ldc, rows, cols)
                }
                Lines::F32(l) => strip(path, a, lda, (&l[at..], k), dims, out, ldc),
                Lines::Bf16(l) => strip(path, a, lda, (&l[at..], k), dims, out, ldc),
                Lines::Pairs(_) => unreachable!(),
            }
        }
    }

    /// Rows i0..i1 of x as `panels_into` takes them: from the pair staging when there is one.
    fn rows(
        &self,
        x: MatRef,
        staged: Option<&[u16]>,
        rows: Range<usize>,
        scratch: &mut Vec<f32>,
    ) -> Rows {
        match staged {
            Some(s) => {
                let ld = padded_k(self.k);
                Rows::Bf16(s[rows.start * ld..].as_ptr(), ld)
            }
            None => {
                let (a, lda) = rows_f32(x, rows, scratch);
                Rows::F32(a, lda)
            }
        }
    }
}

/// Rows of a as a kernel reads them: (pointer, row stride in elements).
#[derive(Clone, Copy)]
enum Rows {
    F32(*const f32, usize),
    /// bf16 bits, `padded_k` wide and zero past k, the rows padded to a multiple of 16.
    Bf16(*const u16, usize),
}

/// b's panels in k pairs (`LinePair`), padded with zero lines to `padded_k / 2` per panel,
/// each panel filled by one rayon task, reading b along its shorter stride.
fn pack_pairs<T: Copy + Sync>(d: &[T], b: MatRef, bits: impl Fn(T) -> u16 + Sync) -> Vec<LinePair> {
    let (k, n) = (b.rows, b.cols);
    let per_panel = padded_k(k) / 2;
    let mut lines = vec![LinePair([0; 2 * NR]); n.div_ceil(NR) * per_panel];
    lines
        .par_chunks_mut(per_panel)
        .enumerate()
        .for_each(|(p, panel)| {
            let cols = p * NR..((p + 1) * NR).min(n);
            let panel = &mut panel[..k.div_ceil(2)];
            if b.rs <= b.cs {
                // Down a column: b's k run is contiguous (a weight stored [n, k]).
                for (c, j) in cols.enumerate() {
                    let column = &d[j * b.cs..];
                    for (q, line) in panel.iter_mut().enumerate() {
                        line.0[2 * c] = bits(column[2 * q * b.rs]);
                        if 2 * q + 1 < k {
                            line.0[2 * c + 1] = bits(column[(2 * q + 1) * b.rs]);
                        }
                    }
                }
            } else {
                // Along a row: b's 16 columns at one k are contiguous.
                for q in 0..k {
                    let row = &d[q * b.rs..];
                    let line = &mut panel[q / 2].0;
                    for (c, j) in cols.clone().enumerate() {
                        line[2 * c + q % 2] = bits(row[j * b.cs]);
                    }
                }
            }
        });
    lines
}

/// `pack_pairs` of an f32 b rounded to bf16 (nearest even): in registers (`pairs`) where b runs
/// along one of its axes and the CPU has AVX-512-BF16, else element by element.
fn pack_pairs_rounded(d: &[f32], b: MatRef) -> Vec<LinePair> {
    #[cfg(target_arch = "x86_64")]
    if isa::features().has("avx512_bf16") && (b.cs == 1 || b.rs == 1) {
        let (k, n) = (b.rows, b.cols);
        let per_panel = padded_k(k) / 2;
        let mut lines = vec![LinePair([0; 2 * NR]); n.div_ceil(NR) * per_panel];
        lines
            .par_chunks_mut(per_panel * RUN / NR)
            .enumerate()
            .filter(|_| k > 0)
            .for_each(|(t, panels)| {
                let (j, cols) = (t * RUN, (n - t * RUN).min(RUN));
                let out = panels.as_mut_ptr();
                // SAFETY: the instructions were just detected; b's elements lie in d (checked
                // by the caller); the chunk holds cols/16 panels of padded_k / 2 ≥ k.div_ceil(2)
                // lines.
                unsafe {
                    match b.cs == 1 {
                        true => {
                            let run = d[j..].as_ptr();
                            pairs::pair_lines_from_rows(run, b.rs, k, cols, (out, per_panel))
                        }
                        false => {
                            for g in 0..cols.div_ceil(NR) {
                                let col = d[(j + g * NR) * b.cs..].as_ptr();
                                let out = out.add(g * per_panel);
                                let cols = (cols - g * NR).min(NR);
                                pairs::pair_lines_from_columns(col, b.cs, k, cols, out)
                            }
                        }
                    }
                }
            });
        return lines;
    }
    pack_pairs(d, b, |v| bf16::from_f32(v).to_bits())
}

/// x rounded to bf16 (round to nearest even), row-major, `padded_k(k)` wide, zero in the padding
/// columns and in the rows added to make a multiple of 16; blocks of rows in parallel, each read
/// along x's shorter stride. Written into fresh memory once: only the padding is zeroed first
/// (a zeroed buffer cost as much as the rounding).
fn stage_pairs(x: MatRef) -> Vec<u16> {
    let (m, k) = (x.rows, x.cols);
    let ld = padded_k(k);
    let total = m.div_ceil(PAIR_ROWS).max(1) * PAIR_ROWS * ld;
    let mut out = Vec::<u16>::with_capacity(total);
    // A transposed x is read in runs of `RUN` rows, row-major x a row at a time.
    let task_rows = if x.cs == 1 { PAIR_ROWS } else { RUN };
    #[cfg(target_arch = "x86_64")]
    let fast = isa::features().has("avx512_bf16");
    #[cfg(not(target_arch = "x86_64"))]
    let fast = false;
    out.spare_capacity_mut()[..total]
        .par_chunks_mut(task_rows * ld)
        .enumerate()
        .for_each(|(t, chunk)| {
            let r0 = t * task_rows;
            let rows = m.saturating_sub(r0).min(task_rows);
            let at = |i: usize, q: usize| (r0 + i) * x.rs + q * x.cs;
            let base = chunk.as_mut_ptr() as *mut u16;
            let written = match x.data {
                Data::F32(_) if x.cs == 1 => true,
                Data::F32(_) => fast && x.rs == 1,
                Data::Bf16(_) => false,
            };
            // SAFETY: every pointer below stays inside this chunk (`rows` rows of ld ≥ k, then
            // the padding rows); the chunk is zeroed where no path writes, and whole before an
            // element path, so the buffer is initialised when its length is set.
            unsafe {
                if !written {
                    std::ptr::write_bytes(base, 0, chunk.len());
                } else {
                    for i in 0..rows {
                        std::ptr::write_bytes(base.add(i * ld + k), 0, ld - k);
                    }
                    let tail = rows * ld;
                    std::ptr::write_bytes(base.add(tail), 0, chunk.len() - tail);
                }
                match x.data {
                    Data::F32(d) if x.cs == 1 => {
                        for i in 0..rows {
                            round_into(&d[at(i, 0)..at(i, 0) + k], base.add(i * ld));
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    Data::F32(d) if written => {
                        let a = d[r0.min(d.len())..].as_ptr();
                        pairs::rows_from_columns(a, x.cs, rows, k, base, ld)
                    }
                    Data::F32(d) => {
                        let out = std::slice::from_raw_parts_mut(base, chunk.len());
                        transpose_into(out, ld, rows, k, x.rs < x.cs, |i, q| {
                            bf16::from_f32(d[at(i, q)]).to_bits()
                        })
                    }
                    Data::Bf16(d) => {
                        let out = std::slice::from_raw_parts_mut(base, chunk.len());
                        transpose_into(out, ld, rows, k, x.rs < x.cs, |i, q| d[at(i, q)].to_bits())
                    }
                }
            }
        });
    // SAFETY: every element of the first `total` was written above.
    unsafe { out.set_len(total) };
    out
}

/// out[i·ld + q] = f(i, q) for i < rows, q < k: rows inner when `rows_inner` (x's row stride is
/// the shorter), else along each row.
fn transpose_into(
    out: &mut [u16],
    ld: usize,
    rows: usize,
    k: usize,
    rows_inner: bool,
    f: impl Fn(usize, usize) -> u16,
) {
    if rows_inner {
        for q in 0..k {
            for i in 0..rows {
                out[i * ld + q] = f(i, q);
            }
        }
    } else {
        for i in 0..rows {
            for (q, o) in out[i * ld..i * ld + k].iter_mut().enumerate() {
                *o = f(i, q);
            }
        }
    }
}

/// f32 → bf16 bits, round to nearest even (as `half` and VCVTNEPS2BF16 round), vectorised
/// where the CPU has AVX-512-BF16.
pub(crate) fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    // SAFETY: dst has room for n.
    unsafe { round_into(&src[..n], dst.as_mut_ptr()) }
}

/// `round_to_bf16` into memory that need not be initialised.
///
/// # Safety
/// dst has room for src.len() elements.
unsafe fn round_into(src: &[f32], dst: *mut u16) {
    #[cfg(target_arch = "x86_64")]
    if isa::features().has("avx512_bf16") {
        // SAFETY: the instructions were just detected; the caller vouches for dst.
        return avx512bf16::round(src, dst);
    }
    for (i, &v) in src.iter().enumerate() {
        dst.add(i).write(bf16::from_f32(v).to_bits());
    }
}

/// out[rows × cols] += a · panels on a pair path: AMX tiles where there are at least 16 rows,
/// VDPBF16PS otherwise.
///
/// # Safety
/// `runnable(path)` and `path.bf16_products()`; a as `Rows::Bf16` (rows padded to 16); `panels` the
/// first panel and the stride between panels in lines, each `kpairs` lines; out as in
/// `panels_into`.
unsafe fn pair_strip(
    path: Isa,
    a: (*const u16, usize),
    panels: (*const LinePair, usize),
    (kpairs, rows, cols): (usize, usize, usize),
    out: *mut f32,
    ldc: usize,
) {
    #[cfg(target_arch = "x86_64")]
    match path {
        Isa::AmxBf16 if rows >= amx::MIN_ROWS => {
            amx::strip(a, panels, kpairs, out, ldc, rows, cols)
        }
        _ => avx512bf16::strip(a, panels, kpairs, out, ldc, rows, cols),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no pair path on {path}")
}

/// The lines of b's panels (each element converted by `elem`), each panel filled by one rayon
/// task.
fn pack_lines<T: Copy + Sync, L: Line>(
    d: &[T],
    b: MatRef,
    elem: impl Fn(T) -> L::Elem + Sync,
) -> Vec<L> {
    let (k, n) = (b.rows, b.cols);
    let mut lines = vec![L::ZERO; n.div_ceil(NR) * k];
    lines
        .par_chunks_mut(k.max(1))
        .enumerate()
        .for_each(|(p, panel)| {
            let cols = p * NR..((p + 1) * NR).min(n);
            for (q, line) in panel.iter_mut().enumerate() {
                for (c, j) in cols.clone().enumerate() {
                    line.set(c, elem(d[q * b.rs + j * b.cs]));
                }
            }
        });
    lines
}

/// The rows of x (all k columns) as row-major f32: in place (pointer, row stride) when x is f32
/// with unit column stride, else staged into `scratch`.
fn rows_f32(x: MatRef, rows: Range<usize>, scratch: &mut Vec<f32>) -> (*const f32, usize) {
    if let (Data::F32(d), 1) = (x.data, x.cs) {
        return (d[rows.start * x.rs..].as_ptr(), x.rs);
    }
    let w = x.cols;
    scratch.clear();
    scratch.resize(rows.len() * w, 0.0);
    match x.data {
        Data::F32(d) => stage(d, |v| v, x, rows, scratch),
        Data::Bf16(d) => stage(d, widen, x, rows, scratch),
    }
    (scratch.as_ptr(), w)
}

/// bf16 → f32 is exact: the bf16 bits are the f32's upper half.
#[inline(always)]
fn widen(v: bf16) -> f32 {
    f32::from_bits((v.to_bits() as u32) << 16)
}

/// Copies x's rows into `out` (row-major, x.cols wide), reading along x's shorter stride.
fn stage<T: Copy>(d: &[T], f: impl Fn(T) -> f32, x: MatRef, rows: Range<usize>, out: &mut [f32]) {
    let w = x.cols;
    if x.cs == 1 {
        // Contiguous rows: a plain conversion loop, which vectorises.
        for (r, o) in rows.zip(out.chunks_mut(w)) {
            for (o, &v) in o.iter_mut().zip(&d[r * x.rs..r * x.rs + w]) {
                *o = f(v);
            }
        }
    } else if x.cs <= x.rs {
        for (r, o) in rows.zip(out.chunks_mut(w)) {
            for (q, o) in o.iter_mut().enumerate() {
                *o = f(d[r * x.rs + q * x.cs]);
            }
        }
    } else {
        for q in 0..w {
            for (i, r) in rows.clone().enumerate() {
                out[i * w + q] = f(d[r * x.rs + q * x.cs]);
            }
        }
    }
}

/// out[rows × cols] += a[rows × kc] · panels on `path`: the microkernels' one entry.
///
/// # Safety
/// `runnable(path)`; a holds `rows` rows of `lda` floats, at least kc of each; `panels` holds
/// kc lines from its start for each of the cols/16 panels `stride` lines apart; out as in
/// `panels_into`.
unsafe fn strip<L: Line>(
    path: Isa,
    a: *const f32,
    lda: usize,
    (panels, stride): (&[L], usize),
    (kc, rows, cols): (usize, usize, usize),
    out: *mut f32,
    ldc: usize,
) {
    let panel = (panels.as_ptr(), stride);
    match path {
        // AVX-512 CPUs widen bf16 lines on the AVX2 kernel (`panels_into` sends f32 lines to
        // the AVX-512 one, and bf16 paths pack bf16 in pairs).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16 | Isa::AmxBf16 => {
            avx2::strip(a, lda, panel, kc, out, ldc, rows, cols)
        }
        _ => generic::strip(a, lda, panel, kc, out, ldc, rows, cols),
    }
}

/// What the AVX2 microkernel needs of a line: its 16 columns as two f32 vectors.
#[cfg(target_arch = "x86_64")]
use avx2::Load;
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait Load {}
#[cfg(not(target_arch = "x86_64"))]
impl Load for LineF32 {}
#[cfg(not(target_arch = "x86_64"))]
impl Load for LineBf16 {}

/// A packed weight shared by the clones of a layer, made on first use.
pub type PackedCache = Arc<std::sync::OnceLock<PackedWeight>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Values whose rounding to bf16 is a tie or near one (low 16 bits at and around 0x8000,
    /// even and odd kept bit), of both signs and many exponents; no subnormals, which
    /// VCVTNEPS2BF16 flushes to zero where `half` keeps them.
    fn awkward(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = rng.uniform_f32() * 2.0 - 1.0;
                let bits = v.to_bits() & 0xffff_0000;
                let low = [0x8000, 0x7fff, 0x8001, 0, 0xffff][i % 5];
                f32::from_bits(bits | low) * (1 << (i % 9)) as f32
            })
            .collect()
    }

    /// The register paths of the pair packing and of the transposed staging (where this CPU
    /// has AVX-512-BF16) give the element paths' bits, on every layout and awkward sizes:
    /// k odd, below and above one 32-deep block, n not a multiple of 16, rows not of 16.
    #[test]
    fn register_pair_packing_matches_element_by_element() {
        if !isa::features().has("avx512_bf16") {
            println!("skipped: this CPU has no AVX-512-BF16 (the element paths run)");
            return;
        }
        let mut rng = Rng::seed(21);
        for (k, n) in [
            (1, 1),
            (2, 17),
            (7, 16),
            (31, 5),
            (32, 33),
            (33, 40),
            (70, 3),
            (130, 49),
        ] {
            let d = awkward(k * n, &mut rng);
            for (rs, cs) in [(n, 1), (1, k)] {
                let b = MatRef {
                    data: Data::F32(&d),
                    rows: k,
                    cols: n,
                    rs,
                    cs,
                };
                let fast = pack_pairs_rounded(&d, b);
                let slow = pack_pairs(&d, b, |v| bf16::from_f32(v).to_bits());
                assert_eq!(fast.len(), slow.len());
                for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                    assert_eq!(f.0, s.0, "k {k} n {n} strides ({rs}, {cs}) line {i}");
                }
                // The same matrix as a staged a (m = k rows of n), read through its strides.
                let a = MatRef {
                    rows: k,
                    cols: n,
                    ..b
                };
                let (ld, m) = (padded_k(n), k.div_ceil(PAIR_ROWS).max(1) * PAIR_ROWS);
                let mut want = vec![0u16; m * ld];
                for i in 0..k {
                    for q in 0..n {
                        want[i * ld + q] = bf16::from_f32(d[i * rs + q * cs]).to_bits();
                    }
                }
                assert_eq!(
                    stage_pairs(a),
                    want,
                    "staged k {k} n {n} strides ({rs}, {cs})"
                );
            }
        }
    }
}
