//! Fused CPU attention: scores, scale, mask, softmax and the value product of every head in one
//! custom op with an explicit backward pass (llm.c's attention_forward / attention_backward).
//! In the composed form each of these is an autograd node with its own [B, H, L, Lk] tensor, and
//! GPT-2's head split adds a dozen narrow / reshape / transpose / copy nodes per layer; here the
//! heads are read in place through strides and each (batch, head) is one rayon task calling GEMM.
//!
//!   forward   P = softmax(scale·Q·Kᵀ + bias),  Y = P·V                 saved: P
//!   backward  dP = dY·Vᵀ,  dS = scale·P ⊙ (dP − rowsum(P ⊙ dP))
//!             dQ = dS·K,  dK = Σ_group dSᵀ·Q,  dV = Σ_group Pᵀ·dY
//!
//! The composed reference is `scaled_dot_product_attention_composed` in attention.rs.

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;
use super::custom::{Inputs, Kernel, Saved};
use super::gemm::{isa, matmul_acc_bf16_on, Data, Isa, MatRef};
use super::team::{self, SharedMut};

/// Where one operand's heads live: element (b, h, i, d) sits at off + b·sb + h·sh + i·sl + d.
#[derive(Clone, Copy, Debug)]
struct Heads {
    off: usize,
    sb: usize,
    sh: usize,
    sl: usize,
}

impl Heads {
    fn at(&self, b: usize, h: usize) -> usize {
        self.off + b * self.sb + h * self.sh
    }
}

/// Sizes and memory views of one attention call.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    b: usize,
    h: usize,
    kh: usize,
    l: usize,
    lk: usize,
    dh: usize,
    q: Heads,
    k: Heads,
    v: Heads,
    /// The output (and dY) layout.
    o: Heads,
}

/// Where the heads of a [B, K, Lk, Dh] view with these strides live (its rows of Dh must be
/// contiguous).
fn strided_heads(stride: &[usize]) -> Result<Heads> {
    match stride {
        &[sb, sh, sl, 1] => Ok(Heads { off: 0, sb, sh, sl }),
        _ => candle_core::bail!("attention keys or values with strides {stride:?}"),
    }
}

/// The fewest query rows whose products take the bf16 kernel (`FusedAttention::bf16_products`):
/// SmolLM2's 32-row dual-cache block ran 2–5% slower with them, its 257-row canvas 7% faster.
const BF16_MIN_QUERIES: usize = 64;

/// A task's `len` probabilities from `start`: its part of the kept buffer, or (none kept) its
/// own zeroed scratch.
///
/// # Safety
/// As `SharedMut::part` for the kept buffer.
unsafe fn probs_part<'a>(
    kept: Option<&'a SharedMut<f32>>,
    start: usize,
    len: usize,
    scratch: &'a mut Vec<f32>,
) -> &'a mut [f32] {
    match kept {
        Some(all) => all.part(start, len),
        None => {
            scratch.resize(len, 0.0);
            scratch
        }
    }
}

/// The most query rows whose products are plain dot products and AXPYs rather than GEMM calls:
/// for a decoding step's one query, a GEMM call's set-up costs more than its arithmetic.
const DIRECT_QUERIES: usize = 4;

cpu::simd_fn! {
    /// `softmax_rows` compiled for the vector units this CPU has (a canvas of 256 positions
    /// exponentiates 9 × 256 × 256 scores a layer).
    fn softmax_rows_on(
        scale: f32,
        p: &mut [f32],
        l: usize,
        lk: usize,
        bias: Option<&[Vec<f32>]>,
    ) = softmax_rows;
}

/// Softmax of `p`'s rows of `lk` scores times `scale`, plus `bias` row (row index mod `l`).
#[inline(always)]
fn softmax_rows(scale: f32, p: &mut [f32], l: usize, lk: usize, bias: Option<&[Vec<f32>]>) {
    for (r, row) in p.chunks_mut(lk).enumerate() {
        scale_row(row, scale, bias.map(|b| b[r % l].as_slice()));
        let m = cpu::max(row);
        normalise_row(row, m);
    }
}

/// A row of scores times `scale`, plus `bias`.
#[inline(always)]
fn scale_row(row: &mut [f32], scale: f32, bias: Option<&[f32]>) {
    match bias {
        Some(bias) => row
            .iter_mut()
            .zip(bias)
            .for_each(|(s, b)| *s = *s * scale + b),
        None => row.iter_mut().for_each(|s| *s *= scale),
    }
}

/// A row of scores to its softmax against its maximum `top`; returns Σ e^(score − top).
#[inline(always)]
fn normalise_row(row: &mut [f32], top: f32) -> f32 {
    row.iter_mut().for_each(|s| *s = cpu::exp(*s - top));
    let sum = cpu::sum(row);
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|s| *s *= inv);
    sum
}

/// Keys and values of one head: (data, head offset, row stride).
type HeadRows<'a> = (&'a [f32], usize, usize);

cpu::simd_fn! {
    /// `direct_span` compiled for the vector units this CPU has.
    fn direct_span_on(
        scale: f32,
        queries: &[&[f32]],
        bias: Option<&[&[f32]]>,
        kv: (HeadRows, HeadRows),
        keys: std::ops::Range<usize>,
        p: &mut [f32],
        part: &mut [f32],
    ) = direct_span;
}

/// The fewest keys per span of a split head (`FusedAttention::attend_direct`).
const MIN_SPAN_KEYS: usize = 32;

/// One key/value head's span of keys against the `queries` rows of its group, for
/// `attend_direct`: scores scale·q·k (+ each row's `bias` over the span) into `p` ([rows, keys]),
/// their softmax over the span, and Σ p·v into `part`'s first rows × dh, followed by each row's
/// maximum score and Σ e^(score − maximum) (0 where the span is wholly masked). Keys and values
/// are (data, head offset, row stride).
#[inline(always)]
fn direct_span(
    scale: f32,
    queries: &[&[f32]],
    bias: Option<&[&[f32]]>,
    ((k, ko, ks), (v, vo, vs)): (HeadRows, HeadRows),
    keys: std::ops::Range<usize>,
    p: &mut [f32],
    part: &mut [f32],
) {
    let (rows, n) = (queries.len(), keys.len());
    let dh = queries.first().map_or(0, |q| q.len());
    let kernel = direct_kernel::for_head(dh);
    if n > 0 {
        // The span's first key and value rows and all after them (bounds checked here once).
        let (kr, vr) = (&k[ko + keys.start * ks..], &v[vo + keys.start * vs..]);
        assert!(kr.len() >= (n - 1) * ks + dh && vr.len() >= (n - 1) * vs + dh);
        match kernel {
            // SAFETY: the kernel's CPU features were detected; the rows lie in kr (checked).
            Some(kernel) => unsafe { kernel.scores(queries, kr.as_ptr(), ks, n, p) },
            None => {
                for j in 0..n {
                    let kj = &kr[j * ks..][..dh];
                    for (r, q) in queries.iter().enumerate() {
                        p[r * n + j] = cpu::dot(q, kj);
                    }
                }
            }
        }
    }
    let (outs, stats) = part.split_at_mut(rows * dh);
    for (r, row) in p.chunks_mut(n).enumerate() {
        scale_row(row, scale, bias.map(|b| b[r % b.len()]));
        let top = cpu::max(row);
        if top == f32::NEG_INFINITY {
            // Every key of the span masked: it takes no share of the row.
            row.fill(0.0);
            (stats[r], stats[rows + r]) = (top, 0.0);
            continue;
        }
        (stats[r], stats[rows + r]) = (top, normalise_row(row, top));
    }
    if n == 0 {
        return;
    }
    let vr = &v[vo + keys.start * vs..];
    match kernel {
        // SAFETY: as for the scores.
        Some(kernel) => unsafe { kernel.weighted_values(p, n, vr.as_ptr(), vs, outs) },
        None => {
            for j in 0..n {
                let vj = &vr[j * vs..][..dh];
                for (y, row) in outs.chunks_exact_mut(dh.max(1)).zip(p.chunks(n)) {
                    let pj = row[j];
                    y.iter_mut().zip(vj).for_each(|(y, v)| *y += pj * v);
                }
            }
        }
    }
}

/// `direct_span`'s two products in AVX-512 code for heads of 16, 32, 64 or 128 (one to eight
/// registers a row): the scores of 16 keys at a time as 16 registers of partial products
/// folded into one register of sums by a tree of two-source permutes (the portable dot
/// product reduced each score across its lanes alone), and the weighted values accumulated in
/// registers across a span's keys (the portable loop loaded and stored its output row for every
/// key). Decoding 512 tokens of SmolLM2 (Q4_0) spent 16% of its time in the portable loops
/// (`perf`), 9% in these.
mod direct_kernel {
    /// Registers per head row, on a CPU with AVX-512.
    #[derive(Clone, Copy)]
    pub struct Kernel(usize);

    /// The kernel for heads of `dh`, if this CPU's path runs AVX-512 and dh is one it takes.
    pub fn for_head(dh: usize) -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        if super::isa::selected() >= super::Isa::Avx512 && matches!(dh, 16 | 32 | 64 | 128) {
            return Some(Kernel(dh / 16));
        }
        let _ = dh;
        None
    }

    /// `$f::<C>($args)` for C = `$c` registers a head row (1, 2, 4 or 8).
    #[cfg(target_arch = "x86_64")]
    macro_rules! by_width {
        ($c:expr, $($f:ident)::+($($arg:expr),*)) => {
            match $c {
                1 => $($f)::+::<1>($($arg),*),
                2 => $($f)::+::<2>($($arg),*),
                4 => $($f)::+::<4>($($arg),*),
                _ => $($f)::+::<8>($($arg),*),
            }
        };
    }

    impl Kernel {
        /// p[r·n + j] = q_r · (the key row at k + j·ks), for the `n` keys from `k`.
        ///
        /// # Safety
        /// From `for_head`; each query row holds 16·c floats; the n key rows lie at k.
        pub unsafe fn scores(
            self,
            queries: &[&[f32]],
            k: *const f32,
            ks: usize,
            n: usize,
            p: &mut [f32],
        ) {
            #[cfg(target_arch = "x86_64")]
            by_width!(self.0, x86::scores(queries, k, ks, n, p))
        }

        /// out row r = Σ_j p[r·n + j] · (the value row at v + j·vs), for the `n` values from v
        /// and out's rows of 16·c floats.
        ///
        /// # Safety
        /// As `scores`, for the value rows.
        pub unsafe fn weighted_values(
            self,
            p: &[f32],
            n: usize,
            v: *const f32,
            vs: usize,
            out: &mut [f32],
        ) {
            #[cfg(target_arch = "x86_64")]
            by_width!(self.0, x86::weighted_values(p, n, v, vs, out))
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        #[target_feature(enable = "avx512f")]
        pub unsafe fn scores<const C: usize>(
            queries: &[&[f32]],
            k: *const f32,
            ks: usize,
            n: usize,
            p: &mut [f32],
        ) {
            for (r, q) in queries.iter().enumerate() {
                let mut qv = [_mm512_setzero_ps(); C];
                for (c, v) in qv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(q[16 * c..].as_ptr());
                }
                let out = p[r * n..(r + 1) * n].as_mut_ptr();
                let whole = n / 16 * 16;
                let mut t = [_mm512_setzero_ps(); 16];
                for j0 in (0..whole).step_by(16) {
                    for (j, t) in t.iter_mut().enumerate() {
                        *t = dot::<C>(&qv, k.add((j0 + j) * ks));
                    }
                    _mm512_storeu_ps(out.add(j0), fold16(&t));
                }
                if whole < n {
                    for (j, t) in t.iter_mut().enumerate() {
                        *t = match whole + j < n {
                            true => dot::<C>(&qv, k.add((whole + j) * ks)),
                            false => _mm512_setzero_ps(),
                        };
                    }
                    let mask = (1u16 << (n - whole)) - 1;
                    _mm512_mask_storeu_ps(out.add(whole), mask, fold16(&t));
                }
            }
        }

        /// q's products with the row at `row`, lane by lane (summed across registers).
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn dot<const C: usize>(q: &[__m512; C], row: *const f32) -> __m512 {
            let mut acc = _mm512_mul_ps(q[0], _mm512_loadu_ps(row));
            for (c, q) in q.iter().enumerate().skip(1) {
                acc = _mm512_fmadd_ps(*q, _mm512_loadu_ps(row.add(16 * c)), acc);
            }
            acc
        }

        /// `fold16`'s permute indices [lo, hi] for rounds of half-width h = 1, 2, 4, 8. Before a
        /// round each register holds 8/h items (one t's partial sums) of 2h lanes; after it,
        /// a's items then b's, h lanes each: `lo` takes each item's first h lanes, `hi` its
        /// last h (lanes 16.. name b's).
        const FOLD: [[[i32; 16]; 2]; 4] = {
            let mut t = [[[0i32; 16]; 2]; 4];
            let mut r = 0;
            while r < 4 {
                let h = 1 << r;
                let items = 8 / h;
                let mut l = 0;
                while l < 16 {
                    let (item, at) = (l / h, l % h);
                    let source = if item < items { 0 } else { 16 };
                    let first = source + (item % items) * 2 * h + at;
                    t[r as usize][0][l as usize] = first;
                    t[r as usize][1][l as usize] = first + h;
                    l += 1;
                }
                r += 1;
            }
            t
        };

        /// Lane i of the result: the sum of t[i]'s lanes. Four rounds of two-source permutes
        /// and adds, each halving the registers and doubling the vectors they hold.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn fold16(t: &[__m512; 16]) -> __m512 {
            let mut u = [_mm512_setzero_ps(); 8];
            for i in 0..8 {
                u[i] = fold_round(0, t[2 * i], t[2 * i + 1]);
            }
            let mut w = [_mm512_setzero_ps(); 4];
            for i in 0..4 {
                w[i] = fold_round(1, u[2 * i], u[2 * i + 1]);
            }
            let x = [fold_round(2, w[0], w[1]), fold_round(2, w[2], w[3])];
            fold_round(3, x[0], x[1])
        }

        /// One round of `fold16` (the first is 0): a's and b's items halved and added.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn fold_round(round: usize, a: __m512, b: __m512) -> __m512 {
            let [lo, hi] = &FOLD[3 - round];
            let (lo, hi) = (
                _mm512_loadu_si512(lo.as_ptr() as _),
                _mm512_loadu_si512(hi.as_ptr() as _),
            );
            _mm512_add_ps(
                _mm512_permutex2var_ps(a, lo, b),
                _mm512_permutex2var_ps(a, hi, b),
            )
        }

        /// acc += p · (the row at `row`).
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn axpy<const C: usize>(acc: &mut [__m512; C], p: f32, row: *const f32) {
            let p = _mm512_set1_ps(p);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(p, _mm512_loadu_ps(row.add(16 * c)), *a);
            }
        }

        #[target_feature(enable = "avx512f")]
        pub unsafe fn weighted_values<const C: usize>(
            p: &[f32],
            n: usize,
            v: *const f32,
            vs: usize,
            out: &mut [f32],
        ) {
            for (row, y) in p.chunks_exact(n).zip(out.chunks_exact_mut(16 * C)) {
                // Two sets of sums, alternate keys: one set's FMAs would wait on each other.
                let (mut even, mut odd) = ([_mm512_setzero_ps(); C], [_mm512_setzero_ps(); C]);
                for j in (0..n - n % 2).step_by(2) {
                    axpy::<C>(&mut even, row[j], v.add(j * vs));
                    axpy::<C>(&mut odd, row[j + 1], v.add((j + 1) * vs));
                }
                if n % 2 == 1 {
                    axpy::<C>(&mut even, row[n - 1], v.add((n - 1) * vs));
                }
                for c in 0..C {
                    let sum = _mm512_add_ps(even[c], odd[c]);
                    _mm512_storeu_ps(y[16 * c..].as_mut_ptr(), sum);
                }
            }
        }
    }
}

/// One head of an operand as a rows × cols matrix starting at `off`, with strides (rs, cs).
fn head(
    d: &[f32],
    off: usize,
    (rows, cols): (usize, usize),
    (rs, cs): (usize, usize),
) -> MatRef<'_> {
    MatRef {
        data: Data::F32(&d[off..]),
        rows,
        cols,
        rs,
        cs,
    }
}

/// dst[m×n] = (or +=) lhs[m×k]·rhs[k×n], single-threaded: the parallelism is across heads.
unsafe fn matmul(
    dims: (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: cpu::Mat,
    rhs: cpu::Mat,
) {
    cpu::gemm_f32(dims, dst, accumulate, lhs, rhs, gemm::Parallelism::None)
}

pub struct FusedAttention {
    scale: f32,
    /// The products (forward Q·Kᵀ and P·V, and the backward's four) in bf16 operands with f32
    /// accumulation on dlm's bf16 GEMM path, as a bf16 model's inference and mixed-precision
    /// training (autocast's bmm) run them (`bf16_products`).
    bf16_path: Option<Isa>,
    /// [L, Lk] additive mask, a constant.
    bias: Option<Tensor>,
    /// Some(H): one packed [B, L, 3·H·Dh] q|k|v input and a [B, L, H·Dh] output (GPT-2's c_attn
    /// layout). None: q [B, H, L, Dh], k and v [B, K, Lk, Dh], output [B, H, L, Dh].
    packed_heads: Option<usize>,
    /// Whether the forward keeps P for a backward pass (`keep_probabilities`).
    keep_probs: bool,
    saved_probs: Saved<Vec<f32>>,
}

impl FusedAttention {
    pub fn new(scale: f64, bias: Option<Tensor>, packed_heads: Option<usize>) -> Self {
        Self {
            scale: scale as f32,
            bf16_path: None,
            bias,
            packed_heads,
            keep_probs: true,
            saved_probs: Saved::new("attention"),
        }
    }

    /// Whether the forward keeps the probabilities P [B, H, L, Lk] for the backward pass. A
    /// forward nothing will differentiate need not: each task then writes its head's P to a
    /// scratch buffer of its own, which stays in cache, and nothing of size B·H·L·Lk is
    /// allocated and zeroed.
    pub fn keep_probabilities(mut self, keep: bool) -> Self {
        self.keep_probs = keep;
        self
    }

    /// Runs the forward's products in bf16 operands (f32 accumulation) where dlm's GEMM path
    /// multiplies in bf16 (avx512bf16, amx-bf16); elsewhere they stay f32.
    pub fn bf16_products(mut self, on: bool) -> Self {
        let path = isa::gemm_path();
        self.bf16_path = (on && path.bf16_products()).then_some(path);
        self
    }

    fn packed_geometry(&self, h: usize, shape: &Shape) -> Result<Geometry> {
        let (b, l, d3) = shape.dims3()?;
        let d = d3 / 3;
        let dh = d / h.max(1);
        if d3 % 3 != 0 || h == 0 || d % h != 0 {
            candle_core::bail!("packed qkv of width {d3} does not split into 3×{h} heads");
        }
        let view = |part: usize| Heads {
            off: part * d,
            sb: l * d3,
            sh: dh,
            sl: d3,
        };
        let o = Heads {
            off: 0,
            sb: l * d,
            sh: dh,
            sl: d,
        };
        let (q, k, v) = (view(0), view(1), view(2));
        Ok(Geometry {
            b,
            h,
            kh: h,
            l,
            lk: l,
            dh,
            q,
            k,
            v,
            o,
        })
    }

    /// The geometry of a call on one packed qkv or on q, k and v.
    fn geometry(&self, shapes: &[&Shape]) -> Result<Geometry> {
        match (self.packed_heads, shapes) {
            (Some(h), [qkv]) => self.packed_geometry(h, qkv),
            (None, [q, k, _v]) => self.split_geometry(q, k),
            _ => candle_core::bail!("attention over {} inputs", shapes.len()),
        }
    }

    fn split_geometry(&self, q: &Shape, k: &Shape) -> Result<Geometry> {
        let (b, h, l, dh) = q.dims4()?;
        let (_, kh, lk, _) = k.dims4()?;
        if kh == 0 || h % kh != 0 {
            candle_core::bail!("{h} query heads do not group over {kh} key/value heads");
        }
        let qv = Heads {
            off: 0,
            sb: h * l * dh,
            sh: l * dh,
            sl: dh,
        };
        let kv = Heads {
            off: 0,
            sb: kh * lk * dh,
            sh: lk * dh,
            sl: dh,
        };
        Ok(Geometry {
            b,
            h,
            kh,
            l,
            lk,
            dh,
            q: qv,
            k: kv,
            v: kv,
            o: qv,
        })
    }

    /// Y, saving P (when kept). q, k and v may be the same (packed) slice.
    fn attend(&self, g: &Geometry, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        let bias = self.bias.as_ref().map(|b| b.to_vec2::<f32>()).transpose()?;
        if let Some(bias) = &bias {
            if bias.len() != g.l || bias.iter().any(|r| r.len() != g.lk) {
                candle_core::bail!("attention mask is not [{}, {}]", g.l, g.lk);
            }
        }
        let (l, lk, dh) = (g.l, g.lk, g.dh);
        // Packing a head's K and V for the bf16 kernel costs what the f32 GEMM spends on a few
        // dozen query rows: fewer rows (a cached block's queries) keep the f32 products.
        let bf16_path = self.bf16_path.filter(|_| l >= BF16_MIN_QUERIES);
        let mut out = vec![0f32; g.b * g.h * l * dh];
        let kept_len = match self.keep_probs {
            true => g.b * g.h * l * lk,
            false => 0,
        };
        let mut probs = vec![0f32; kept_len];
        let out_ptr = SharedMut::new(&mut out);
        let probs_of = SharedMut::new(&mut probs);
        let kept = self.keep_probs.then_some(&probs_of);
        if l <= DIRECT_QUERIES && bf16_path.is_none() {
            self.attend_direct(g, bias.as_deref(), (q, k, v), kept, out_ptr);
        } else {
            self.attend_heads(g, bias.as_deref(), (q, k, v), bf16_path, kept, out_ptr);
        }
        if self.keep_probs {
            self.saved_probs.put(probs)?;
        }
        Ok(out)
    }

    /// `attend` by one task per (batch, head), each two products (on the bf16 path, or f32 GEMM
    /// calls) around its softmax.
    fn attend_heads(
        &self,
        g: &Geometry,
        bias: Option<&[Vec<f32>]>,
        (q, k, v): (&[f32], &[f32], &[f32]),
        bf16_path: Option<Isa>,
        kept: Option<&SharedMut<f32>>,
        out_ptr: SharedMut<f32>,
    ) {
        let (l, lk, dh, group) = (g.l, g.lk, g.dh, g.h / g.kh);
        // One task per (batch, head), on the decode team inside one (`team`).
        team::for_each(g.b * g.h, |bh| {
            let mut scratch = vec![];
            // SAFETY: head bh's own l·lk probabilities.
            let p = unsafe { probs_part(kept, bh * l * lk, l * lk, &mut scratch) };
            let (b, h) = (bh / g.h, bh % g.h);
            let (qh, kh, vh) = (g.q.at(b, h), g.k.at(b, h / group), g.v.at(b, h / group));
            let out = out_ptr;
            match bf16_path {
                // p is zero: the product accumulates into it.
                Some(path) => matmul_acc_bf16_on(
                    path,
                    head(q, qh, (l, dh), (g.q.sl, 1)),
                    head(k, kh, (dh, lk), (1, g.k.sl)),
                    p,
                ),
                // SAFETY: every view stays inside its buffer (shapes checked by candle and
                // the geometry), and head (b, h) of the output is written by this task alone.
                None => unsafe {
                    let s = (p.as_mut_ptr(), lk, 1);
                    let kt = (k.as_ptr().add(kh), 1, g.k.sl);
                    matmul((l, lk, dh), s, false, (q.as_ptr().add(qh), g.q.sl, 1), kt);
                },
            }
            self.softmax_rows(p, l, lk, bias);
            let y = out.ptr(g.o.at(b, h));
            match bf16_path {
                Some(path) => {
                    let mut yh = vec![0f32; l * dh];
                    matmul_acc_bf16_on(
                        path,
                        MatRef::row_major(Data::F32(p), l, lk),
                        head(v, vh, (lk, dh), (g.v.sl, 1)),
                        &mut yh,
                    );
                    for (i, row) in yh.chunks(dh).enumerate() {
                        // SAFETY: row i of this head's output lies at y + i·sl, inside `out`,
                        // and this task alone writes it.
                        unsafe {
                            std::ptr::copy_nonoverlapping(row.as_ptr(), y.add(i * g.o.sl), dh)
                        };
                    }
                }
                // SAFETY: as for the scores; row i of this head's output lies at y + i·sl.
                None => unsafe {
                    let vv = (v.as_ptr().add(vh), g.v.sl, 1);
                    matmul((l, dh, lk), (y, g.o.sl, 1), false, (p.as_ptr(), lk, 1), vv);
                },
            }
        });
    }

    /// Softmax of `p`'s rows of `lk` scaled scores, plus `bias` row (row index mod `l`).
    fn softmax_rows(&self, p: &mut [f32], l: usize, lk: usize, bias: Option<&[Vec<f32>]>) {
        softmax_rows_on(self.scale, p, l, lk, bias)
    }

    /// `attend` for a few queries (decoding): tasks of one key/value head and a span of its
    /// keys, each reading them once for all the query heads of its group (`direct_span`: dot
    /// products and AXPYs). Where P is not kept and the heads do not share out evenly among
    /// the threads (SmolLM2's 3 over 2 threads left one idle a third of the time), a head's
    /// keys are split in spans: each span's softmax runs against its own maximum, and the
    /// spans' outputs are merged after by their maxima and sums (flash decoding's split).
    fn attend_direct(
        &self,
        g: &Geometry,
        bias: Option<&[Vec<f32>]>,
        (q, k, v): (&[f32], &[f32], &[f32]),
        kept: Option<&SharedMut<f32>>,
        out: SharedMut<f32>,
    ) {
        let (l, lk, dh, group) = (g.l, g.lk, g.dh, g.h / g.kh);
        let (heads, rows) = (g.b * g.kh, group * l);
        let threads = rayon::current_num_threads().max(1);
        let spans = match kept {
            None if !heads.is_multiple_of(threads) => threads.min(lk / MIN_SPAN_KEYS).max(1),
            _ => 1,
        };
        let span_len = lk.div_ceil(spans);
        // Task t: head t / spans, span t % spans; its outputs [rows, dh] (normalised over its
        // span), then per row its maximum score and Σ e^(score − maximum).
        let parts = team::map(heads * spans, |t| {
            let (b, kv, s) = (t / spans / g.kh, t / spans % g.kh, t % spans);
            let keys = s * span_len..((s + 1) * span_len).min(lk);
            let first = b * g.h + kv * group;
            let mut scratch = vec![];
            // SAFETY: the group's query heads' probabilities (consecutive heads, whole rows:
            // one span when kept), this task's alone.
            let p = unsafe { probs_part(kept, first * l * lk, rows * keys.len(), &mut scratch) };
            // Row r: query row r % l of the group's head r / l.
            let queries: Vec<&[f32]> = (0..rows)
                .map(|r| &q[g.q.at(b, kv * group + r / l) + (r % l) * g.q.sl..][..dh])
                .collect();
            let bias: Option<Vec<&[f32]>> =
                bias.map(|rows| rows.iter().map(|row| &row[keys.clone()]).collect());
            let mut part = vec![0f32; rows * (dh + 2)];
            let (kh, vh) = ((k, g.k.at(b, kv), g.k.sl), (v, g.v.at(b, kv), g.v.sl));
            direct_span_on(
                self.scale,
                &queries,
                bias.as_deref(),
                (kh, vh),
                keys,
                p,
                &mut part,
            );
            part
        });
        for (bk, parts) in parts.chunks(spans).enumerate() {
            let (b, kv) = (bk / g.kh, bk % g.kh);
            for r in 0..rows {
                let stat = |part: &[f32], i: usize| part[rows * dh + i * rows + r];
                let top = parts
                    .iter()
                    .map(|p| stat(p, 0))
                    .fold(f32::NEG_INFINITY, f32::max);
                // Span s's share: its Σ e^(score − top).
                let shares: Vec<f32> = parts
                    .iter()
                    .map(|p| stat(p, 1) * cpu::exp(stat(p, 0) - top))
                    .collect();
                let total: f32 = shares.iter().sum();
                let at = g.o.at(b, kv * group + r / l) + (r % l) * g.o.sl;
                // SAFETY: row r of head (b, kv·group + r / l), written here alone, after the
                // tasks.
                let y = unsafe { std::slice::from_raw_parts_mut(out.ptr(at), dh) };
                for (part, share) in parts.iter().zip(&shares) {
                    let w = share / total;
                    let o = &part[r * dh..(r + 1) * dh];
                    y.iter_mut().zip(o).for_each(|(y, o)| *y += w * o);
                }
            }
        }
    }

    /// Writes dQ, dK, dV through `dq`, `dk`, `dv` (laid out as q, k, v; for the packed form all
    /// three point into one dqkv buffer), from the probabilities P the forward pass saved.
    #[allow(clippy::too_many_arguments)]
    fn attend_backward(
        &self,
        g: &Geometry,
        probs: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dy: &[f32],
        (dq, dk, dv): (SharedMut<f32>, SharedMut<f32>, SharedMut<f32>),
    ) {
        let (l, lk, dh) = (g.l, g.lk, g.dh);
        let group = g.h / g.kh;
        // The forward's choice of products (`attend`), so both passes round alike.
        let bf16_path = self.bf16_path.filter(|_| l >= BF16_MIN_QUERIES);
        // One task per (batch, key/value head): it owns dK and dV of that head and the dQ of
        // the query heads that share it.
        (0..g.b * g.kh).into_par_iter().for_each(|bk| {
            let (b, kvh) = (bk / g.kh, bk % g.kh);
            let (dq, dk, dv) = (dq, dk, dv);
            let mut ds = vec![0f32; l * lk];
            let (kh, vh) = (g.k.at(b, kvh), g.v.at(b, kvh));
            for gi in 0..group {
                let h = kvh * group + gi;
                let p = &probs[(b * g.h + h) * l * lk..][..l * lk];
                let (qh, oh) = (g.q.at(b, h), g.o.at(b, h));
                match bf16_path {
                    Some(path) => {
                        ds.fill(0.0);
                        let dyh = head(dy, oh, (l, dh), (g.o.sl, 1));
                        matmul_acc_bf16_on(path, dyh, head(v, vh, (dh, lk), (1, g.v.sl)), &mut ds);
                    }
                    // SAFETY: as in the forward; the heads written here belong to this task only.
                    None => unsafe {
                        let dyv = (dy.as_ptr().add(oh), g.o.sl, 1);
                        let vt = (v.as_ptr().add(vh), 1, g.v.sl);
                        matmul((l, lk, dh), (ds.as_mut_ptr(), lk, 1), false, dyv, vt);
                    },
                }
                for (ds, p) in ds.chunks_mut(lk).zip(p.chunks(lk)) {
                    let s = cpu::dot(ds, p);
                    ds.iter_mut()
                        .zip(p)
                        .for_each(|(d, &p)| *d = self.scale * p * (*d - s));
                }
                let Some(path) = bf16_path else {
                    // SAFETY: as above.
                    unsafe {
                        let dsm = (ds.as_ptr(), lk, 1);
                        let dst = (dq.ptr(qh), g.q.sl, 1);
                        let km = (k.as_ptr().add(kh), g.k.sl, 1);
                        matmul((l, dh, lk), dst, false, dsm, km);
                        let dst = (dk.ptr(kh), g.k.sl, 1);
                        let qm = (q.as_ptr().add(qh), g.q.sl, 1);
                        matmul((lk, dh, l), dst, gi > 0, (ds.as_ptr(), 1, lk), qm);
                        let dst = (dv.ptr(vh), g.v.sl, 1);
                        let dyv = (dy.as_ptr().add(oh), g.o.sl, 1);
                        matmul((lk, dh, l), dst, gi > 0, (p.as_ptr(), 1, lk), dyv);
                    }
                    continue;
                };
                // The bf16 products write contiguous blocks, added into the strided heads.
                let dsm = MatRef::row_major(Data::F32(&ds), l, lk);
                let mut block = vec![0f32; l.max(lk) * dh];
                matmul_acc_bf16_on(path, dsm, head(k, kh, (lk, dh), (g.k.sl, 1)), &mut block);
                // SAFETY: dQ of head h, dK and dV of head kvh belong to this task alone; every
                // row lies inside its buffer (the geometry matches the inputs' shapes).
                unsafe { add_rows(&block[..l * dh], dq.ptr(qh), g.q.sl, dh) };
                block.fill(0.0);
                let qm = head(q, qh, (l, dh), (g.q.sl, 1));
                matmul_acc_bf16_on(path, dsm.t(), qm, &mut block);
                unsafe { add_rows(&block[..lk * dh], dk.ptr(kh), g.k.sl, dh) };
                block.fill(0.0);
                let pm = MatRef::row_major(Data::F32(p), l, lk).t();
                matmul_acc_bf16_on(path, pm, head(dy, oh, (l, dh), (g.o.sl, 1)), &mut block);
                unsafe { add_rows(&block[..lk * dh], dv.ptr(vh), g.v.sl, dh) };
            }
        });
    }
}

/// Adds the rows of `block` (each `width` long) to the rows at `dst`, `stride` apart.
///
/// # Safety
/// Each of the block's rows has room at `dst + i·stride`, written by no one else meanwhile.
unsafe fn add_rows(block: &[f32], dst: *mut f32, stride: usize, width: usize) {
    for (i, row) in block.chunks(width).enumerate() {
        let dst = std::slice::from_raw_parts_mut(dst.add(i * stride), width);
        dst.iter_mut().zip(row).for_each(|(d, &r)| *d += r);
    }
}

/// Packed GPT-2 form: qkv [B, L, 3D] → [B, L, D]. Split form: q [B, H, L, Dh], k and v
/// [B, K, Lk, Dh] → [B, H, L, Dh].
impl Kernel for FusedAttention {
    fn name(&self, arity: usize) -> &'static str {
        match arity {
            1 => "fused-attention-packed",
            _ => "fused-attention",
        }
    }

    fn forward(&self, inputs: &Inputs) -> Result<(Vec<f32>, Shape)> {
        let shapes = (0..inputs.arity())
            .map(|i| inputs.shape(i))
            .collect::<Result<Vec<_>>>()?;
        let mut g = self.geometry(&shapes)?;
        let (q, k, v) = match inputs.arity() {
            1 => (inputs.f32(0)?, inputs.f32(0)?, inputs.f32(0)?),
            _ => {
                // k and v as they are: a key/value cache's valid prefix is such a view.
                let (k, ks) = inputs.f32_strided(1)?;
                let (v, vs) = inputs.f32_strided(2)?;
                (g.k, g.v) = (strided_heads(ks)?, strided_heads(vs)?);
                (inputs.f32(0)?, k, v)
            }
        };
        let out = self.attend(&g, q, k, v)?;
        let shape = match self.packed_heads {
            Some(_) => Shape::from((g.b, g.l, g.h * g.dh)),
            None => Shape::from((g.b, g.h, g.l, g.dh)),
        };
        Ok((out, shape))
    }

    /// The split form's k and v are read through their strides (a cache's prefix, in place).
    fn strided_input(&self, i: usize) -> bool {
        self.packed_heads.is_none() && i > 0
    }

    /// (dqkv) for the packed form, (dq, dk, dv) for the split form (from contiguous copies).
    fn backward(&self, inputs: &[&Tensor], _y: &Tensor, dy: &Tensor) -> Result<Vec<Vec<f32>>> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        let g = self.geometry(&shapes)?;
        let mut grads: Vec<Vec<f32>> = inputs.iter().map(|t| vec![0f32; t.elem_count()]).collect();
        let ptrs: Vec<SharedMut<f32>> = grads.iter_mut().map(|d| SharedMut::new(d)).collect();
        self.saved_probs.with(|probs| match (inputs, &ptrs[..]) {
            (&[qkv], &[d]) => cpu::with_data(qkv, |x| {
                cpu::with_data(dy, |dy| {
                    self.attend_backward(&g, probs, x, x, x, dy, (d, d, d));
                    Ok(())
                })
            }),
            (&[q, k, v], &[dq, dk, dv]) => cpu::with_data(q, |qs| {
                cpu::with_data(k, |ks| {
                    cpu::with_data(v, |vs| {
                        cpu::with_data(dy, |dy| {
                            self.attend_backward(&g, probs, qs, ks, vs, dy, (dq, dk, dv));
                            Ok(())
                        })
                    })
                })
            }),
            _ => candle_core::bail!("attention over {} inputs", inputs.len()),
        })?;
        Ok(grads)
    }
}
