//! `dlm bench sample MODEL_DIR --length 256 --steps 64`: diffusion sampling speed on the exact
//! path (full logits every step, all T forwards: the reference's work) and on each acceleration
//! (needed-rows head, confidence threshold, semi-autoregressive blocks, blocks with the prefix
//! or dual key/value cache), each as a ratio to the exact path measured in the same run, and the share of tokens
//! each agrees on with the run it approximates (the quality change).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::args::{load_model, parse_device, RuntimeArgs};
use crate::rng::Rng;
use crate::sample::canvas::Canvas;
use crate::sample::diffusion::{sample, DiffusionOptions, HeadRows, Sampler};
use crate::sample::kv_reuse::CacheMode;
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
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(a: SampleBenchArgs) -> anyhow::Result<()> {
    let m = load_model(&a.model, &a.runtime)?;
    let device = parse_device(&a.runtime.device)?;
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
        ("exact (top-k confidence, full logits)", exact.clone(), 0),
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
    let mut base = None;
    let mut outputs: Vec<Vec<Canvas>> = Vec::new();
    for (name, opts, compare) in runs {
        let mut batch = vec![canvas.clone(); a.batch];
        let mut rng = Rng::seed(0);
        let t = Instant::now();
        let report = sample(
            m.model.as_ref(),
            &mut batch,
            &opts,
            &mut rng,
            &device,
            &mut |_| {},
        )?;
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
    }
    Ok(())
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
