//! `dlm bench …`: speed measured against a baseline taken in the same run, because these machines
//! are noisy. Each benchmark prints its figures and the ratio to its baseline.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};

use super::args::{load_model, load_model_for_inference, RuntimeArgs};
use crate::model::{Architecture, ModelConfig};
use crate::ops::AttentionMask;
use crate::rng::Rng;
use crate::sample::autoregressive::{generate, ArOptions};
use crate::sample::filter::TokenChoice;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// One full forward (all logits) at a given length, against f32 matmul throughput.
    Forward(ForwardArgs),
    /// Autoregressive decoding with the KV cache: tokens per second.
    Generate(GenerateBenchArgs),
    /// One diffusion training step (forward, backward, AdamW) on a GPT-2-small shape.
    Train(TrainBenchArgs),
    /// Diffusion sampling: the exact path against each acceleration.
    Sample(super::bench_sample::SampleBenchArgs),
    /// Load test of `dlm serve` over loopback: requests/s, p50/p99 latency, well-formed answers.
    Serve(super::bench_serve::ServeBenchArgs),
    /// dlm's GEMM kernels alone, per CPU path and model shape: GFLOP/s against candle and peak.
    Gemm(super::bench_gemm::GemmBenchArgs),
}

#[derive(Debug, Args)]
pub struct TrainBenchArgs {
    /// Model size (tiny, mini, small: GPT-2 with an untied head) or a config.json, as `dlm
    /// pretrain --config` takes it (its vocabulary replaced by --vocab).
    #[arg(long, default_value = "small")]
    pub config: String,
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 50257)]
    pub vocab: usize,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Forward and backward dtype: f32 or bf16 (f32 parameters and moments either way).
    #[arg(long, default_value = "f32")]
    pub dtype: crate::train::params::Precision,
    /// cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: crate::model::runtime::DeviceSpec,
    /// A Python with torch and transformers: also runs `bench/pytorch_train_step.py` (the same
    /// step in PyTorch, fp32 or bf16 autocast as --dtype says) before and after dlm's steps, and
    /// prints dlm's speed-up over their mean (GPT-2 small, vocab 50257 only).
    #[arg(long)]
    pub pytorch: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    pub model: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// causal or bidirectional.
    #[arg(long, default_value = "bidirectional")]
    pub attention: String,
    /// Timed repetitions (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub struct GenerateBenchArgs {
    pub model: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Timed runs (prefill, then the whole generation); the median is reported, with the range
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Forward(a) => forward(a),
        BenchCommand::Generate(a) => generate_bench(a),
        BenchCommand::Train(a) => train_bench(a),
        BenchCommand::Sample(a) => super::bench_sample::run(a),
        BenchCommand::Serve(a) => super::bench_serve::run(a),
        BenchCommand::Gemm(a) => super::bench_gemm::run(a),
    }
}

/// Best wall time in seconds of `iters` runs of `f`, after one warm-up run.
pub(super) fn best_of(
    iters: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// FLOPs of one forward over `tokens` positions of length `l` sequences: every weight matrix
/// (head included) once per token, plus the two attention products.
fn forward_flops(c: &ModelConfig, batch: usize, l: usize) -> f64 {
    let (d, f) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = (c.num_heads * c.head_dim) as f64;
    let kv = (c.num_kv_heads * c.head_dim) as f64;
    let per_layer = match c.arch {
        Architecture::Gpt2 => 3.0 * d * d + d * d + 2.0 * d * f,
        Architecture::Llama | Architecture::Llada | Architecture::Dream => {
            d * q + 2.0 * d * kv + q * d + 3.0 * d * f
        }
    };
    let tokens = (batch * l) as f64;
    let linear = 2.0 * tokens * (c.num_layers as f64 * per_layer + c.vocab_size as f64 * d);
    let attention = c.num_layers as f64 * batch as f64 * 4.0 * (l * l) as f64 * q;
    linear + attention
}

/// f32 GEMM throughput on this machine now, on the model's own MLP shape.
fn matmul_gflops(m: usize, k: usize, n: usize, device: &Device) -> anyhow::Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (m, k), device)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), device)?;
    let secs = best_of(5, || {
        let c = a.matmul(&b)?;
        device.synchronize()?;
        drop(c);
        Ok(())
    })?;
    Ok(2.0 * (m * k * n) as f64 / secs / 1e9)
}

fn forward(a: ForwardArgs) -> anyhow::Result<()> {
    let m = load_model_for_inference(&a.model, &a.runtime)?;
    let device = a.runtime.device.open()?;
    let c = &m.config;
    let mask = match a.attention.as_str() {
        "causal" => AttentionMask::Causal,
        "bidirectional" => AttentionMask::Bidirectional,
        other => anyhow::bail!("bench forward takes causal or bidirectional, not `{other}`"),
    };
    let mut rng = Rng::seed(0);
    let ids: Vec<u32> = (0..a.batch * a.seq)
        .map(|_| (rng.next_u64() % c.vocab_size as u64) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (a.batch, a.seq), &device)?;
    let baseline = matmul_gflops(a.batch * a.seq, c.hidden_size, c.intermediate_size, &device)?;
    let secs = best_of(a.iters, || {
        let logits = m.model.forward(&ids, &mask)?;
        device.synchronize()?;
        drop(logits);
        Ok(())
    })?;
    let flops = forward_flops(c, a.batch, a.seq);
    let gflops = flops / secs / 1e9;
    println!(
        "forward {} {}x{} {} ({}): {:.1} ms, {:.0} tokens/s, {:.1} GFLOP/s effective",
        a.model.display(),
        a.batch,
        a.seq,
        a.attention,
        a.runtime.dtype,
        secs * 1e3,
        (a.batch * a.seq) as f64 / secs,
        gflops
    );
    println!(
        "baseline f32 matmul {}x{}x{}: {:.1} GFLOP/s; ratio {:.2}",
        a.batch * a.seq,
        c.hidden_size,
        c.intermediate_size,
        baseline,
        gflops / baseline
    );
    Ok(())
}

fn generate_bench(a: GenerateBenchArgs) -> anyhow::Result<()> {
    let mut m = load_model(&a.model, &a.runtime)?;
    // The weights' bytes, counted before a bf16 model's stored copy is released.
    let bytes: usize = m
        .weights
        .iter()
        .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    m.release_for_inference()?;
    println!(
        "bench generate {} ({}, {} threads): loaded, peak RSS {:.0} MB",
        a.model.display(),
        a.runtime.dtype,
        rayon::current_num_threads(),
        peak_rss_mb().unwrap_or(f64::NAN)
    );
    let device = a.runtime.device.open()?;
    let prompt: Vec<u32> = (0..a.prompt_tokens as u32).map(|i| 100 + i).collect();
    let opts = ArOptions {
        max_new_tokens: a.tokens,
        choice: TokenChoice::Greedy,
        stop_ids: vec![],
    };
    let mut rng = Rng::seed(0);
    let run = |n: usize, rng: &mut Rng| -> anyhow::Result<f64> {
        let t = Instant::now();
        generate(
            m.model.as_ref(),
            &prompt,
            &ArOptions {
                max_new_tokens: n,
                ..opts.clone()
            },
            rng,
            &device,
            |_| {},
        )?;
        Ok(t.elapsed().as_secs_f64())
    };
    if a.tokens < 2 {
        anyhow::bail!(
            "--tokens must be at least 2 (decoding is timed as the run after the first token)"
        );
    }
    // One untimed token first: it packs the weights for the kernel (on first use), which the
    // prefill timed next would otherwise include, and decoding then be understated by.
    run(1, &mut rng)?;
    // The bandwidths are measured before decoding and again after it, the higher kept: the
    // same copy measured up to 25% lower after the decoding runs (the allocator's and the
    // kernel's page state), which would loosen the bound.
    let buffer = bytes.max(1 << 26);
    let (read_before, copy_before) = (read_bandwidth(buffer)?, copy_bandwidth(buffer)?);
    // Prefill alone (one token), then the full run: the difference is pure decoding. Each
    // figure is the median of `runs` (decoding on 2 cores swings by 10-20% from run to run).
    let (mut prefills, mut decodes) = (vec![], vec![]);
    for _ in 0..a.runs.max(1) {
        let prefill = run(1, &mut rng)?;
        let total = run(a.tokens, &mut rng)?;
        prefills.push(prefill);
        decodes.push((total - prefill).max(1e-9) / (a.tokens - 1).max(1) as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (prefill, decode) = (median(&mut prefills), median(&mut decodes));
    // Baseline: the time to read as many bytes as the weights once (a parallel read of a
    // buffer of real pages: a zeroed one maps one shared page and reads at cache speed), which
    // bounds batch-1 decoding from below.
    let stream = bytes as f64 / read_bandwidth(buffer)?.max(read_before);
    println!(
        "generate {}: prefill {} tokens {:.1} ms, decode {:.1} ms/token ({:.1} tokens/s; median \
         of {} runs, {:.1}-{:.1} ms/token)",
        a.model.display(),
        a.prompt_tokens,
        prefill * 1e3,
        decode * 1e3,
        1.0 / decode,
        decodes.len(),
        decodes[0] * 1e3,
        decodes[decodes.len() - 1] * 1e3,
    );
    println!(
        "baseline: reading all {:.0} MB of weights once takes {:.1} ms ({:.1} GB/s read); ratio \
         decode/stream {:.2}",
        bytes as f64 / 1e6,
        stream * 1e3,
        bytes as f64 / stream / 1e9,
        decode / stream
    );
    // The weight-streaming bound: every weight byte crosses memory once per token, at the
    // bandwidth a parallel copy reaches in this run (read + write bytes per second).
    let bandwidth = copy_bandwidth(buffer)?.max(copy_before);
    let bound = bandwidth / bytes.max(1) as f64;
    println!(
        "copy bandwidth {:.1} GB/s: weight-streaming bound {:.1} tokens/s; decode {:.1} tokens/s \
         ({:.0}% of the bound); quantised-kernel {}; peak RSS {:.0} MB",
        bandwidth / 1e9,
        bound,
        1.0 / decode,
        100.0 / decode / bound,
        crate::ops::quant::QuantKernel::selected().name(),
        peak_rss_mb().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Bytes per second a parallel read of an `n`-byte buffer reaches (best of five).
fn read_bandwidth(n: usize) -> anyhow::Result<f64> {
    use rayon::prelude::*;
    let src = vec![1u64; n / 8];
    let chunk = (n / 8).div_ceil(rayon::current_num_threads().max(1));
    let secs = best_of(5, || {
        let sum: u64 = src
            .par_chunks(chunk)
            .map(|c| {
                // Eight independent lanes, so the loop vectorises.
                let mut acc = [0u64; 8];
                for v in c.chunks_exact(8) {
                    for (a, v) in acc.iter_mut().zip(v) {
                        *a = a.wrapping_add(*v);
                    }
                }
                acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
            })
            .sum();
        std::hint::black_box(sum);
        Ok(())
    })?;
    Ok(n as f64 / secs)
}

/// Bytes per second (read plus written) of a parallel copy of `n` bytes (best of five).
fn copy_bandwidth(n: usize) -> anyhow::Result<f64> {
    use rayon::prelude::*;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let chunk = n.div_ceil(rayon::current_num_threads().max(1));
    let secs = best_of(5, || {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        Ok(())
    })?;
    Ok(2.0 * n as f64 / secs)
}

/// Peak resident memory of this process in MB (10⁶ bytes), from /proc (Linux), whose `VmHWM`
/// counts KiB.
pub(super) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0 / 1e6)
}

fn train_bench(a: TrainBenchArgs) -> anyhow::Result<()> {
    use crate::data::loader::Batch;
    use crate::train::adamw::{clip_coefficient, global_grad_norm, AdamW, AdamWConfig};
    use crate::train::objective::Objective;
    use crate::train::params::TrainableModel;
    use crate::train::step::forward_loss;

    if a.pytorch.is_some() && (a.config != "small" || a.vocab != 50257) {
        anyhow::bail!("--pytorch compares GPT-2 small (--config small --vocab 50257) only: the PyTorch script builds that model");
    }
    let device = a.device.open()?;
    let (value, model_name) = match a.config.parse::<crate::model::preset::Size>() {
        Ok(size) => {
            let (layers, d, heads) = size.dims();
            // GPT-2 with an untied head, as the PyTorch reference step in bench/ measures.
            let value = serde_json::json!({
                "model_type": "gpt2", "vocab_size": a.vocab, "n_positions": a.seq.max(1024),
                "n_embd": d, "n_layer": layers, "n_head": heads, "tie_word_embeddings": false,
            });
            (value, format!("gpt2-{}", a.config))
        }
        // A config.json (the built-in model's, say), with --vocab as its vocabulary.
        Err(_) => (
            super::pretrain::config_file(&a.config, a.vocab)?,
            a.config.clone(),
        ),
    };
    let config = ModelConfig::from_json(value, std::path::Path::new(&a.config))?;
    let d = config.hidden_size;
    anyhow::ensure!(
        a.seq <= config.max_position_embeddings,
        "--seq {} exceeds the {} positions of {}",
        a.seq,
        config.max_position_embeddings,
        a.config
    );
    let weights = crate::train::init::init_weights(&config, &mut Rng::seed(0))?;
    let mut model = TrainableModel::new(&config, &weights, &device)?;
    model.set_precision(a.dtype, std::path::Path::new("<bench>"))?;
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let objective = Objective::diffusion(config.arch, 0, false, 0)?;
    let mut rng = Rng::seed(1);
    let batch = Batch {
        ids: (0..a.batch)
            .map(|_| {
                (0..a.seq)
                    .map(|_| 1 + (rng.next_u64() % (a.vocab as u64 - 1)) as u32)
                    .collect()
            })
            .collect(),
        src_mask: vec![vec![0; a.seq]; a.batch],
        epoch: 0,
    };
    let baseline = matmul_gflops(a.batch * a.seq, d, 4 * d, &device)?;
    let pytorch_before = a
        .pytorch
        .as_ref()
        .map(|py| pytorch_step(py, &a))
        .transpose()?;
    let (mut fwd, mut bwd, mut opt) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..=a.steps {
        let t0 = Instant::now();
        let prepared = objective.prepare(&batch, step as u64, &mut rng, &device)?;
        let loss = forward_loss(
            model.model.as_ref(),
            &prepared.input,
            &prepared.mask,
            &prepared.targets,
            &device,
        )?;
        device.synchronize()?;
        let t1 = Instant::now();
        let grads = model.gradients(&loss.weighted.backward()?)?;
        device.synchronize()?;
        let t2 = Instant::now();
        let norm = global_grad_norm(&grads)?;
        optimizer.step(&model.vars, &grads, 3e-4, clip_coefficient(norm, Some(1.0)))?;
        model.rebuild(std::path::Path::new("<bench>"))?;
        device.synchronize()?;
        let t3 = Instant::now();
        if step > 0 {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            opt.push((t3 - t2).as_secs_f64());
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (f, b, o) = (mean(&fwd), mean(&bwd), mean(&opt));
    let total = f + b + o;
    let params = model.num_parameters();
    // 6·N·tokens for forward + backward of the weight matmuls (the head scores ~t of the rows).
    let flops = 6.0 * params as f64 * (a.batch * a.seq) as f64;
    println!(
        "train step {} ({} head, {} params, {} compute on {}) batch {} seq {}: {:.2} s/step = forward {:.2} + backward {:.2} + optimizer {:.2}; {:.0} tokens/s; peak RSS {:.0} MB",
        model_name, if config.tie_word_embeddings { "tied" } else { "untied" }, params, a.dtype.dtype().as_str(), a.device, a.batch, a.seq, total, f, b, o, (a.batch * a.seq) as f64 / total, peak_rss_mb().unwrap_or(f64::NAN)
    );
    println!(
        "baseline f32 matmul {}x{}x{}: {:.1} GFLOP/s; step at {:.1} GFLOP/s effective (6·N·tokens), ratio {:.2}",
        a.batch * a.seq, d, 4 * d, baseline, flops / total / 1e9, flops / total / 1e9 / baseline
    );
    if let (Some(py), Some(before)) = (&a.pytorch, pytorch_before) {
        let after = pytorch_step(py, &a)?;
        let torch = (before + after) / 2.0;
        println!(
            "pytorch {} train step: {torch:.2} s/step (before {before:.2}, after {after:.2}); dlm x{:.2} vs PyTorch",
            torch_dtype(a.dtype.dtype()),
            torch / total
        );
    }
    Ok(())
}

/// PyTorch's name for the compute dtype: fp32, or bf16 (autocast in the scripts).
pub(super) fn torch_dtype(dtype: DType) -> &'static str {
    if dtype == DType::BF16 {
        "bf16"
    } else {
        "fp32"
    }
}

/// s/step of `bench/pytorch_train_step.py` on the same shape, dtype and step count.
fn pytorch_step(python: &std::path::Path, a: &TrainBenchArgs) -> anyhow::Result<f64> {
    let args = [
        "--dtype",
        torch_dtype(a.dtype.dtype()),
        "--steps",
        &a.steps.to_string(),
        "--seq",
        &a.seq.to_string(),
        "--batch",
        &a.batch.to_string(),
        "--device",
        &a.device.to_string(),
    ];
    let out = run_bench_script(python, "pytorch_train_step.py", &args)?;
    // "pytorch fp32 train step (batch 1, seq 512, cpu): 3.47 s = forward …"
    out.lines()
        .find_map(|l| l.split("): ").nth(1)?.split(" s =").next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no s/step in the output of pytorch_train_step.py: {out}"))
}

/// Runs `bench/SCRIPT ARGS…` under `python` and returns its stdout; a failed run is an error
/// carrying the script's last line of stderr.
pub(super) fn run_bench_script(
    python: &std::path::Path,
    script: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bench")
        .join(script);
    let out = std::process::Command::new(python)
        .arg(&path)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", python.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
