//! `dlm bench gemm`: dlm's GEMM kernels alone, per path this CPU runs and per model shape, in
//! GFLOP/s, against candle's GEMM measured in the same run, and against the path's own peak (a
//! register-only FMA loop on all threads).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Args;

use super::bench::best_of;
use crate::ops::gemm::{self, bf16, isa, peak, Data, Isa, MatRef};
use crate::ops::quant::{QuantActivations, QuantKernel, QuantMatrix, QuantType};
use crate::rng::Rng;

#[derive(Debug, Args)]
pub struct GemmBenchArgs {
    /// Model shapes, comma-separated: smollm2 (M = 256 tokens), gpt2 (GPT-2 small, M = 512);
    /// `NAME:M` sets the rows (e.g. smollm2:33, a dual-cache step's window).
    #[arg(long, default_value = "smollm2,gpt2")]
    pub shapes: String,
    /// Paths to run, comma-separated (default: every path this CPU runs).
    #[arg(long)]
    pub paths: Option<String>,
    /// Timed repetitions per row after one warm-up (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
}

/// (name, M, K, N) of y[M×N] = x[M×K]·Wᵀ for each linear of a model (and its LM head).
fn shapes(spec: &str) -> anyhow::Result<Vec<(String, usize, usize, usize)>> {
    let (model, rows) = match spec.split_once(':') {
        Some((model, rows)) => match rows.parse::<usize>() {
            Ok(r) if r > 0 => (model, Some(r)),
            _ => anyhow::bail!("--shapes: `{spec}`: the rows after `:` must be a positive integer"),
        },
        None => (spec, None),
    };
    let (m, list): (usize, &[(&str, usize, usize)]) = match model {
        "smollm2" => (
            256,
            &[
                ("q/o proj", 576, 576),
                ("k/v proj", 576, 192),
                ("gate/up proj", 576, 1536),
                ("down proj", 1536, 576),
                ("lm head", 576, 49152),
            ],
        ),
        "gpt2" => (
            512,
            &[
                ("c_attn", 768, 2304),
                ("attn c_proj", 768, 768),
                ("c_fc", 768, 3072),
                ("mlp c_proj", 3072, 768),
                ("lm head", 768, 50257),
            ],
        ),
        other => anyhow::bail!("--shapes: unknown model `{other}` (expected smollm2 or gpt2)"),
    };
    let m = rows.unwrap_or(m);
    Ok(list
        .iter()
        .map(|&(name, k, n)| (format!("{model} {name}"), m, k, n))
        .collect())
}

/// The kept-quantised products y = x·Wᵀ (int8 activations) of the shape at M and at M = 1 (one
/// decoded token), on the quantised kernel of each path run.
fn quant_rows(
    iters: usize,
    paths: &[Isa],
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    row: &mut dyn FnMut(&str, Option<Isa>, f64),
) -> anyhow::Result<()> {
    for ty in [QuantType::Q8_0, QuantType::Q4_0] {
        let q = QuantMatrix::quantize(ty, w, n, k)?;
        for &path in paths {
            let kernel = QuantKernel::on_path(path);
            for rows in [m, 1] {
                let secs = best_of(iters, || {
                    q.matmul_with(kernel, QuantActivations::Int8, &x[..rows * k], rows)?;
                    Ok(())
                })?;
                // Rated per the shape's M: a one-row product is scaled to M rows' FLOPs.
                let label = format!("{} W, int8 x, M = {rows}", ty.name());
                row(&label, Some(path), secs * (m / rows) as f64);
            }
            if m > 1 {
                let secs = best_of(iters, || {
                    q.matmul_bf16_on(path, &x[..m * k], m)?;
                    Ok(())
                })?;
                let label = format!("{} W in bf16 tiles, M = {m}", ty.name());
                row(&label, Some(path), secs);
            }
        }
    }
    Ok(())
}

/// GFLOP/s of `path`'s FMA loop on every rayon thread at once.
fn peak_gflops(path: Isa) -> f64 {
    let rounds = 4_000_000;
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let flops: f64 = rayon::broadcast(|_| peak::fma_loop(path, rounds))
            .iter()
            .sum();
        best = best.max(flops / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

pub fn run(a: GemmBenchArgs) -> anyhow::Result<()> {
    let (runnable, skipped) = gemm::runnable_paths();
    let paths: Vec<Isa> = match &a.paths {
        None => runnable.clone(),
        Some(list) => list
            .split(',')
            .map(|p| {
                runnable
                    .iter()
                    .copied()
                    .find(|r| r.name() == p.trim())
                    .ok_or_else(|| anyhow::anyhow!("--paths: `{p}` is not a path this CPU runs"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let peaks: Vec<(Isa, f64)> = paths.iter().map(|&p| (p, peak_gflops(p))).collect();
    let mut lines = vec![];
    let dev = Device::Cpu;
    let mut rng = Rng::seed(1);
    for model in a.shapes.split(',') {
        for (name, m, k, n) in shapes(model.trim())? {
            let gflop = 2.0 * (m * n * k) as f64 / 1e9;
            lines.push(format!("{name}: M={m} K={k} N={n} ({gflop:.2} GFLOP)"));
            let mut values =
                |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform_f32() - 0.5).collect() };
            let (x, w, dy) = (values(m * k), values(n * k), values(m * n));
            let round = |v: &[f32]| v.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
            let w16 = round(&w);
            let xt = Tensor::from_slice(&x, (m, k), &dev)?;
            let wt = Tensor::from_slice(&w, (n, k), &dev)?;
            let baseline = best_of(a.iters, || {
                xt.matmul(&wt.t()?)?;
                Ok(())
            })?;
            let mut row = |what: &str, path: Option<Isa>, secs: f64| {
                let rate = gflop / secs;
                let of_peak = path
                    .and_then(|p| peaks.iter().find(|(q, _)| *q == p))
                    .map_or("-".to_string(), |(_, peak)| {
                        format!("{:.0}%", 100.0 * rate / peak)
                    });
                lines.push(format!(
                    "  {what:<40} {:<10} {:>9.2} ms {:>8.1} GFLOP/s {:>6.2}× candle f32  {of_peak:>5} of peak",
                    path.map_or("candle".into(), |p| p.to_string()),
                    secs * 1e3,
                    rate,
                    baseline / secs,
                ));
            };
            row("candle f32 matmul x·Wᵀ (baseline)", None, baseline);
            let (x16t, w16t) = (xt.to_dtype(DType::BF16)?, wt.to_dtype(DType::BF16)?);
            row(
                "candle bf16 matmul x·Wᵀ",
                None,
                best_of(a.iters, || {
                    x16t.matmul(&w16t.t()?)?;
                    Ok(())
                })?,
            );
            let xm = MatRef::row_major(Data::F32(&x), m, k);
            // W [n, k] read as the [k, n] matrix of y = x·W.
            let w_b = |d| MatRef::row_major(d, n, k).t();
            let mut y = vec![0f32; m * n];
            for &path in &paths {
                let packed = gemm::PackedWeight::new_on(path, Data::F32(&w), n, k, false);
                let packed16 = gemm::PackedWeight::new_on(path, Data::Bf16(&w16), n, k, false);
                let mut timed = |what: &str, f: &mut dyn FnMut(&mut [f32])| -> anyhow::Result<()> {
                    let secs = best_of(a.iters, || {
                        y.fill(0.0);
                        f(&mut y);
                        Ok(())
                    })?;
                    row(what, Some(path), secs);
                    Ok(())
                };
                timed("packed f32 W, f32 x (inference)", &mut |y| {
                    packed.matmul_acc_on(path, xm, y)
                })?;
                // A bf16 model's inference: f32 activations (`widen_activations`).
                timed("packed bf16 W, f32 x (inference)", &mut |y| {
                    packed16.matmul_acc_on(path, xm, y)
                })?;
                // Mixed-precision training's products: f32 operands, rounded to bf16 as
                // they are packed and staged.
                let dyf = MatRef::row_major(Data::F32(&dy), m, n);
                timed("bf16 train y = x·Wᵀ (f32 W packed)", &mut |y| {
                    gemm::matmul_acc_bf16_on(path, xm, w_b(Data::F32(&w)), y)
                })?;
                let mut dx = vec![0f32; m * k];
                timed("bf16 train dx = dy·W (f32 W packed)", &mut |_| {
                    dx.fill(0.0);
                    gemm::matmul_acc_bf16_on(path, dyf, w_b(Data::F32(&w)).t(), &mut dx)
                })?;
                let mut dw = vec![0f32; n * k];
                timed("bf16 train dW = dyᵀ·x (f32 x packed)", &mut |_| {
                    dw.fill(0.0);
                    gemm::matmul_acc_bf16_on(path, dyf.t(), xm, &mut dw)
                })?;
                // One decoded token (M = 1), rated as the quantised rows are: scaled to M rows.
                let x1 = MatRef::row_major(Data::F32(&x[..k]), 1, k);
                for (what, packed, x1) in [
                    ("packed f32 W, f32 x, M = 1", &packed, x1),
                    ("packed bf16 W, f32 x, M = 1", &packed16, x1),
                ] {
                    let secs = best_of(a.iters, || {
                        y[..n].fill(0.0);
                        packed.matmul_acc_on(path, x1, &mut y[..n]);
                        Ok(())
                    })?;
                    row(what, Some(path), secs * m as f64);
                }
            }
            quant_rows(a.iters, &paths, &x, &w, (m, k, n), &mut row)?;
        }
    }
    let rss = super::bench::peak_rss_mb().unwrap_or(f64::NAN);
    println!(
        "dlm bench gemm: {} | {} threads | selected path {} | peak RSS {rss:.0} MB",
        isa::features().model,
        rayon::current_num_threads(),
        isa::selected()
    );
    let peaks: Vec<_> = peaks
        .iter()
        .map(|(p, g)| format!("{p} {g:.1} GFLOP/s"))
        .collect();
    println!(
        "peak (register-only FMA loop, all threads): {}",
        peaks.join(", ")
    );
    for s in skipped {
        println!("{s}");
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shapes;

    #[test]
    fn a_shape_set_takes_its_rows_after_a_colon() {
        let default = shapes("smollm2").unwrap();
        let window = shapes("smollm2:33").unwrap();
        assert_eq!(default.len(), window.len());
        assert!(default.iter().all(|s| s.1 == 256));
        assert!(window.iter().all(|s| s.1 == 33));
        assert_eq!(
            default.iter().map(|s| (s.2, s.3)).collect::<Vec<_>>(),
            window.iter().map(|s| (s.2, s.3)).collect::<Vec<_>>()
        );
        for bad in ["smollm2:0", "smollm2:x", "gpt3", "gpt2:"] {
            assert!(shapes(bad).is_err(), "{bad}");
        }
    }
}
