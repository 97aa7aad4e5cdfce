//! `dlm bench sample MODEL_DIR --length 256 --steps 64`: diffusion sampling speed on the exact
//! path (the head on every row over the whole vocabulary, every step, all T forwards: the
//! reference's work) and on each acceleration (needed-rows head, confidence threshold,
//! semi-autoregressive blocks, blocks with the prefix or dual key/value cache), each as a ratio
//! to the exact path measured in the same run, and the share of tokens each agrees on with the
//! run it approximates (the quality change).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::args::{load_model_for_inference, RuntimeArgs};
use crate::model::ids_tensor;
use crate::ops::AttentionMask;
use crate::rng::Rng;
use crate::sample::canvas::Canvas;
use crate::sample::denoise::Denoiser;
use crate::sample::head_rows::HeadRows;
use crate::sample::kv_reuse::CacheMode;
use crate::sample::options::{DiffusionOptions, Sampler};
use crate::sample::unmask::Rule;

#[derive(Debug, Args)]
pub struct SampleBenchArgs {
    pub model: PathBuf,
    /// Generated positions (after one BOS position).
    #[arg(long, default_value_t = 256)]
    pub length: usize,
    #[arg(long, default_value_t = 64)]
    pub steps: usize,
    /// Canvases per batched forward.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Probability threshold of the parallel-decoding run.
    #[arg(long, default_value_t = 0.9)]
    pub threshold: f32,
    /// Block length of the semi-autoregressive run.
    #[arg(long, default_value_t = 32)]
    pub block_length: usize,
    /// Mask id; defaults to the config's, else the last vocabulary id (speed does not depend on it).
    #[arg(long)]
    pub mask_id: Option<u32>,
    /// A Python with torch and transformers: also runs `bench/pytorch_sample.py` (the reference
    /// sampler in PyTorch on the same weights) before and after dlm's runs, and prints every
    /// run's speed-up over the mean of the two (a noisy machine needs the baseline in the same run).
    #[arg(long, value_name = "PYTHON")]
    pub pytorch: Option<PathBuf>,
    /// The dtype PyTorch runs in (default: the one dlm runs in): `--dtype bf16 --pytorch-dtype
    /// fp32` sets every dlm run against PyTorch's fp32 reference step.
    #[arg(long, value_parser = ["fp32", "bf16"])]
    pub pytorch_dtype: Option<String>,
    /// Only the exact path (with --pytorch: the parity check alone)
    #[arg(long)]
    pub exact_only: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(a: SampleBenchArgs) -> anyhow::Result<()> {
    if a.pytorch.is_some() && a.batch != 1 {
        anyhow::bail!("--pytorch compares batch 1 only (the PyTorch script runs one canvas)");
    }
    let load = Instant::now();
    let m = load_model_for_inference(&a.model, &a.runtime)?;
    let load_secs = load.elapsed().as_secs_f64();
    let device = a.runtime.device.open()?;
    let cfg = &m.config;
    let mask = a
        .mask_id
        .or(cfg.mask_token_id)
        .unwrap_or(cfg.vocab_size as u32 - 1);
    let bos = cfg
        .bos_token_id
        .filter(|&b| (b as usize) < cfg.vocab_size && b != mask);
    let canvas = Canvas::prefix(&bos.into_iter().collect::<Vec<_>>(), a.length, mask)?;
    let exact = DiffusionOptions::reference(a.steps);
    let ranked = DiffusionOptions {
        sampler: Sampler::Ranked(Rule::Confidence),
        head_rows: HeadRows::Needed,
        ..exact.clone()
    };
    // (name, options, the run whose output it is compared with: the quality change).
    let blocks = DiffusionOptions {
        block_length: Some(a.block_length),
        ..ranked.clone()
    };
    let runs = [
        ("exact (top-k confidence, full head)", exact.clone(), 0),
        (
            "needed-rows head (same output)",
            DiffusionOptions {
                head_rows: HeadRows::Needed,
                ..exact.clone()
            },
            0,
        ),
        (
            "threshold",
            DiffusionOptions {
                threshold: Some(a.threshold),
                ..ranked.clone()
            },
            0,
        ),
        ("blocks", blocks.clone(), 0),
        (
            "blocks + prefix cache",
            DiffusionOptions {
                cache: CacheMode::Prefix,
                ..blocks.clone()
            },
            3,
        ),
        (
            "blocks + dual cache",
            DiffusionOptions {
                cache: CacheMode::Dual,
                ..blocks.clone()
            },
            3,
        ),
        (
            "threshold + blocks + dual cache",
            DiffusionOptions {
                cache: CacheMode::Dual,
                threshold: Some(a.threshold),
                ..blocks
            },
            3,
        ),
    ];
    println!(
        "bench sample {}: canvas {} ({} generated) x batch {}, T = {}, {} {}",
        a.model.display(),
        canvas.len(),
        a.length,
        a.batch,
        a.steps,
        a.runtime.device,
        a.runtime.dtype
    );
    println!(
        "loaded in {load_secs:.1} s, peak RSS {:.0} MB",
        super::bench::peak_rss_mb().unwrap_or(f64::NAN)
    );
    let runs = &runs[..if a.exact_only { 1 } else { runs.len() }];
    // One untimed forward first: it packs the weights for the inference GEMM and faults in the
    // buffers, which every run after the first would otherwise get for free.
    let ids = ids_tensor(&vec![canvas.ids.clone(); a.batch], &device)?;
    m.model.forward(&ids, &AttentionMask::Bidirectional)?;
    let pytorch_before = a
        .pytorch
        .as_ref()
        .map(|py| pytorch_ms(py, &a))
        .transpose()?;
    let mut base = None;
    let mut outputs: Vec<Vec<Canvas>> = Vec::new();
    let mut ms_per_step = Vec::new();
    for (name, opts, compare) in runs.iter().cloned() {
        let mut batch = vec![canvas.clone(); a.batch];
        let mut rng = Rng::seed(0);
        let t = Instant::now();
        let denoiser = Denoiser {
            model: m.model.as_ref(),
            device: &device,
            opts: &opts,
        };
        let report = denoiser.sample(&mut batch, &mut rng, &mut |_| {})?;
        device.synchronize()?;
        let secs = t.elapsed().as_secs_f64();
        let base_secs = *base.get_or_insert(secs);
        let same = outputs
            .get(compare)
            .map_or(1.0, |other| same_tokens(&batch, other));
        println!(
            "{name:<40} {:>4} forwards {:>8.1} ms/step {:>9.1} tokens/s  head rows {:>7}  speed-up x{:.2}  same tokens as run {compare}: {:.1}%",
            report.forwards,
            secs * 1e3 / report.forwards.max(1) as f64,
            (a.length * a.batch) as f64 / secs,
            report.head_rows,
            base_secs / secs,
            100.0 * same
        );
        outputs.push(batch);
        ms_per_step.push((name, secs * 1e3 / report.forwards.max(1) as f64));
    }
    println!(
        "peak RSS {:.0} MB (weights loaded, packed and run)",
        super::bench::peak_rss_mb().unwrap_or(f64::NAN)
    );
    if let (Some(py), Some(before)) = (&a.pytorch, pytorch_before) {
        let after = pytorch_ms(py, &a)?;
        let torch = (before + after) / 2.0;
        println!(
            "pytorch reference sampler ({}, full logits): {torch:.1} ms/step (before {before:.1}, after {after:.1})",
            torch_dtype(&a)
        );
        for (name, ms) in ms_per_step {
            println!("{name:<40} x{:.2} vs PyTorch", torch / ms);
        }
    }
    Ok(())
}

/// ms/step of `bench/pytorch_sample.py` on the same model, canvas and T.
/// The dtype the PyTorch script runs in.
fn torch_dtype(a: &SampleBenchArgs) -> &str {
    a.pytorch_dtype
        .as_deref()
        .unwrap_or_else(|| super::bench::torch_dtype(a.runtime.dtype.dtype()))
}

fn pytorch_ms(python: &std::path::Path, a: &SampleBenchArgs) -> anyhow::Result<f64> {
    let model = a.model.to_string_lossy();
    let args = [
        model.as_ref(),
        "--length",
        &a.length.to_string(),
        "--steps",
        &a.steps.to_string(),
        "--dtype",
        torch_dtype(a),
    ];
    let stdout = super::bench::run_bench_script(python, "pytorch_sample.py", &args)?;
    // "pytorch fp32 reference sampler: canvas 257, T = 64: 641.3 ms/step, 6.2 tokens/s"
    stdout
        .lines()
        .find_map(|l| l.split(": ").last()?.split(" ms/step").next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no ms/step in the output of pytorch_sample.py: {stdout}"))
}

/// Fraction of generated positions where two runs chose the same token.
fn same_tokens(a: &[Canvas], b: &[Canvas]) -> f64 {
    let (mut same, mut total) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        for i in x.generated() {
            same += usize::from(x.ids[i] == y.ids[i]);
            total += 1;
        }
    }
    same as f64 / total.max(1) as f64
}
