//! Plumbing shared by the fused CPU kernels: when a fast path applies, how to borrow a tensor's
//! f32 data, and how to split rows across threads. The kernels themselves live beside their
//! composed references (softmax.rs, norm.rs, cross_entropy.rs, activations.rs).
//!
//! Every fused op is a candle `CustomOp*` (through custom.rs) whose `bwd` returns explicit
//! gradients, so autograd sees one node where the composed version builds five to fifteen, each
//! with its own full-size intermediate and its own zeros-plus-add when its gradient is accumulated.

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor, WithDType};
use rayon::prelude::*;

/// The fused kernels run on f32 CPU tensors only; everything else takes the composed path.
pub fn fusable(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The elements of a contiguous CPU storage, as its layout addresses them.
pub fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => candle_core::bail!("fused kernel needs a contiguous input, got {:?}", l),
    }
}

/// Runs `f` on the f32 data of a tensor, made contiguous first if it is not: borrowed in place on
/// the CPU, copied to the host from other devices.
pub fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    with_slice(t, f)
}

/// `with_data` for any element type (the tensor's own).
pub fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout)?),
        _ => {
            drop(storage);
            f(&t.flatten_all()?.to_vec1::<T>()?)
        }
    }
}

/// Rows handed to one rayon task: enough work to amortise the task, few enough to balance.
pub fn rows_per_task(rows: usize, width: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_balance = rows.div_ceil(4 * threads).max(1);
    let by_size = (16384 / width.max(1)).max(1);
    by_balance.max(by_size).min(rows.max(1))
}

/// Applies `f(row_index, out_row)` to every `width`-wide row of `out`, in parallel.
pub fn par_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if width == 0 {
        return;
    }
    let chunk = rows_per_task(out.len() / width, width);
    out.par_chunks_mut(chunk * width)
        .enumerate()
        .for_each(|(c, block)| {
            simd(|| {
                for (i, row) in block.chunks_mut(width).enumerate() {
                    f(c * chunk + i, row);
                }
            })
        });
}

/// `fn NAME(args) -> R = INNER;` defines NAME to run INNER (an `#[inline(always)]` function of
/// the same arguments) compiled for AVX-512 on the AVX-512 paths, for AVX2 and FMA on the AVX2
/// path, else for the baseline: as `simd`, but certain to inline INNER into the vector code
/// (`simd`'s closure can be left out of line, in SSE code, when it is large; the decoding
/// attention's was). `fn NAME(args) -> R { body }` does the same for a body written in place.
/// No fast-math: the same bits either way.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            $crate::ops::cpu::simd_fn! {
                fn vectorised($($arg: $ty),*) $(-> $ret)? = body;
            }
            vectorised($($arg),*)
        }
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $inner:path;) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                let path = $crate::ops::gemm::isa::selected();
                if path >= $crate::ops::gemm::Isa::Avx512 {
                    // SAFETY: the path's features were detected.
                    return unsafe { avx512($($arg),*) };
                }
                if path >= $crate::ops::gemm::Isa::Avx2 {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// Runs `f` compiled for AVX-512 on the AVX-512 paths (sixteen lanes: the dual-cache sampler
/// step's softmaxes took about 2% off it), else for AVX2 and FMA on the AVX2 path (gemm/isa.rs),
/// so the elementwise loops inside it (inlined into the wrapper) vectorise that wide; the crate
/// itself targets baseline x86-64 (SSE2, four lanes). No fast-math: the results are the same
/// bits either way. Only a closure that LLVM inlines into the wrapper gets those units: a
/// large one can stay out of line in baseline code (attention's softmax, the norms and the
/// activations did), so loops that matter use `simd_fn!` instead.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        let isa = super::gemm::isa::selected();
        if isa >= super::gemm::Isa::Avx512 {
            // SAFETY: the features were just detected.
            return unsafe { simd_avx512(f) };
        }
        if isa >= super::gemm::Isa::Avx2 {
            // SAFETY: the features were just detected.
            return unsafe { simd_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn simd_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn simd_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// e^x in f32, branch-free so loops over it vectorise (libm's `expf` is a call per element).
/// Cephes' range reduction x = n·ln2 + r and degree-6 polynomial: within 2 ulp of `f32::exp`.
/// x < −87 gives exactly 0, so −∞ mask entries contribute nothing, as in the composed path;
/// x > 88 gives ∞ (e^88.7 would still be finite: callers only exponentiate x − max ≤ 0).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    // t = 1.5·2²³ + n holds the integer n in its low mantissa bits.
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ from those bits with integer arithmetic: `n as i32` would be a saturating scalar
    // conversion per lane, which keeps the loops around this function from vectorising.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    let v = y * scale;
    let v = if x > 88.0 { f32::INFINITY } else { v };
    let v = if x < -87.0 { 0.0 } else { v };
    if x.is_nan() {
        x
    } else {
        v
    }
}

/// Σ xᵢ with eight independent accumulators, so the compiler can keep it in vector registers.
#[inline]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Σ xᵢ·yᵢ, vectorisable like `sum`.
#[inline]
pub fn dot(xs: &[f32], ys: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n = xs.len().min(ys.len());
    let (xa, xb) = xs[..n].split_at(n - n % 8);
    let (ya, yb) = ys[..n].split_at(n - n % 8);
    for (c, d) in xa.chunks_exact(8).zip(ya.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += c[k] * d[k];
        }
    }
    acc.iter().sum::<f32>() + xb.iter().zip(yb).map(|(a, b)| a * b).sum::<f32>()
}

/// Σ e^(xᵢ − shift) in f64: exponentials in f32 (vectorised), partial sums of 1024 terms in f32
/// (each term ≤ 1 when shift is the maximum), then f64 across them.
#[inline]
pub fn sum_exp(xs: &[f32], shift: f32) -> f64 {
    xs.chunks(1024)
        .map(|c| {
            // `sum`'s eight accumulators, fed straight from the exponentials.
            let mut acc = [0f32; 8];
            let chunks = c.chunks_exact(8);
            let rest = chunks.remainder();
            for c in chunks {
                for k in 0..8 {
                    acc[k] += exp(c[k] - shift);
                }
            }
            let rest: f32 = rest.iter().map(|&x| exp(x - shift)).sum();
            (acc.iter().sum::<f32>() + rest) as f64
        })
        .sum()
}

/// max xᵢ (−∞ for an empty row).
#[inline]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = acc[k].max(c[k]);
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// A matrix operand: (pointer, row stride, column stride).
pub type Mat = (*const f32, usize, usize);

/// dst[m×n] = lhs[m×k]·rhs[k×n] (+ dst when `accumulate`), each operand given as
/// (pointer, row stride, column stride): the one GEMM call the fused kernels share.
///
/// # Safety
/// Every stride must address only elements inside its operand's buffer, and dst must hold m·n
/// elements at its strides, written by no one else during the call.
pub unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        dst.2 as isize,
        dst.1 as isize,
        accumulate,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    )
}

/// Runs `f` on a thread of rayon's pool. From outside the pool every parallel op inside `f` is
/// injected into it while the caller sleeps on a latch: a wake-up and two context switches per
/// op, which in batch-1 decoding (some 200 products a token, each a few µs of kernel) cost more
/// than the kernels themselves. On a worker, the ops fork and join among threads already awake.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::join(f, || ()).0
}

#[cfg(test)]
mod tests {
    /// `on_pool` runs its closure on a worker of the pool and hands back its result; called again
    /// from a worker it runs in place.
    #[test]
    fn on_pool_runs_on_a_worker() {
        let outer = std::thread::spawn(|| {
            assert_eq!(rayon::current_thread_index(), None);
            super::on_pool(|| {
                let worker = rayon::current_thread_index().expect("on a worker");
                let inner = super::on_pool(rayon::current_thread_index);
                (worker, inner)
            })
        });
        let (worker, inner) = outer.join().unwrap();
        assert_eq!(inner, Some(worker));
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        for i in -90_000..90_000 {
            let x = i as f32 * 1e-3;
            let (got, want) = (super::exp(x), x.exp());
            if want > 1e-37 && x <= 88.0 {
                worst = worst.max(((got - want) / want).abs());
            }
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(f32::INFINITY), f32::INFINITY);
        assert!(super::exp(f32::NAN).is_nan());
    }
}
