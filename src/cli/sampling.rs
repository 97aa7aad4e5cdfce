//! What `dlm generate` (without `--ar`) and `dlm infill` share: sampler flags folded into
//! `DiffusionOptions`, requests (flags or JSONL lines) turned into canvases, batched sampling by
//! canvas length, and the output: text, `--json` lines with `--trace`, or `--show-steps`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use super::args::{load_model_for_inference, RuntimeArgs};
use super::named::named;
use crate::data::tokenizer::Tokenizer;
use crate::model::Architecture;
use crate::rng::Rng;
use crate::sample::canvas::Canvas;
use crate::sample::denoise::Denoiser;
use crate::sample::dream::Alg;
use crate::sample::events::StepEvent;
use crate::sample::family::FamilySettings;
use crate::sample::generation_config::GenerationDefaults;
use crate::sample::kv_reuse::CacheMode;
use crate::sample::llada::Remasking;
use crate::sample::options::DiffusionOptions;
pub use crate::sample::request::Request;
use crate::sample::request::{
    completion_ids, mask_id, render, visible_ids, CanvasBuilder, SamplerName, SamplerSettings,
};

/// Canvases sampled in one batched forward, at most.
const MAX_BATCH: usize = 16;
/// Generated positions of `dlm generate` when neither `--length`, a request nor the model's
/// generation_config.json (`max_new_tokens`) says.
const DEFAULT_LENGTH: usize = 64;

/// Token-choice flags, shared with `--ar`.
#[derive(Debug, Clone, Args)]
pub struct ChoiceArgs {
    /// Softmax temperature; 0 means greedy (argmax) [default: the model's
    /// generation_config.json, else 0].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus filtering threshold.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Clone, Args)]
pub struct DiffusionArgs {
    /// T: denoising steps (forwards). Clamped, with a warning, to the number of masked positions
    /// [default: the model's generation_config.json, else 64].
    #[arg(long)]
    pub steps: Option<usize>,
    /// The commit rule [default: the model's generation_config.json, else the model family's
    /// own: llada for LLaDA, dream for Dream, topk-confidence otherwise]. Naming another sampler
    /// than the model's default also drops its temperature, top-p, top-k and block length.
    #[arg(long, value_parser = named::<SamplerName>())]
    pub sampler: Option<SamplerName>,
    /// llada: what ranks the masked positions [default: low-confidence].
    #[arg(long, value_parser = named::<Remasking>())]
    pub remasking: Option<Remasking>,
    /// llada: classifier-free guidance scale; > 0 adds a pass with the prompt masked [default: 0].
    #[arg(long)]
    pub cfg_scale: Option<f32>,
    /// llada: never choose EOS (token 126081), as generate()'s `logits_eos_inf`.
    #[arg(long)]
    pub logits_eos_inf: bool,
    /// llada: rank a chosen EOT (126348), and at temperature 0 EOS, last, as generate()'s
    /// `confidence_eos_eot_inf`.
    #[arg(long)]
    pub confidence_eos_eot_inf: bool,
    /// dream: how positions are chosen each step [default: entropy, as Dream's demos].
    #[arg(long, value_parser = named::<Alg>())]
    pub alg: Option<Alg>,
    /// dream: > 0 draws the committed positions from softmax(confidence / ALG_TEMP).
    #[arg(long)]
    pub alg_temp: Option<f32>,
    /// dream: the end of the time grid linspace(1, EPS, steps + 1) [default: 0.001].
    #[arg(long)]
    pub eps: Option<f32>,
    /// Parallel decoding: also commit every masked position whose token has probability > P.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Semi-autoregressive blocks of B generated positions, left to right.
    #[arg(long)]
    pub block_length: Option<usize>,
    /// Run the LM head on every row and all T forwards, as the reference does (slower).
    #[arg(long)]
    pub exact: bool,
    /// Reuse keys/values across the steps of a block (approximate, as Fast-dLLM; with
    /// --block-length): `prefix` recomputes the block and what follows it, `dual` the block
    /// only. `none`: exact attention.
    #[arg(long, value_parser = named::<CacheMode>(), default_value_t = CacheMode::None)]
    pub cache: CacheMode,
    /// Mask token id, overriding the model config's `mask_token_id`.
    #[arg(long)]
    pub mask_id: Option<u32>,
    /// Trim trailing EOS/pad tokens from the reported ids (the text always stops at EOS).
    #[arg(long)]
    pub variable_length: bool,
    /// A JSONL file of requests, one object per line (fields as the flags: prompt, prompt_ids,
    /// prefix, suffix, suffix_ids, template, length; with `generate --ar`: prompt or prompt_ids).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// One JSON object per canvas on stdout (`generate --ar`: per prompt, its index and new ids
    /// and text).
    #[arg(long)]
    pub json: bool,
    /// With --json: the canvas after every step.
    #[arg(long)]
    pub trace: bool,
    /// Redraw the canvas in the terminal (stderr) after every step.
    #[arg(long)]
    pub show_steps: bool,
}

/// Parses `"1,2,3"` into ids.
pub fn parse_ids(s: &str) -> anyhow::Result<Vec<u32>> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            x.trim()
                .parse()
                .with_context(|| format!("`{x}` is not a token id"))
        })
        .collect()
}

/// Requests from a JSONL file; a malformed line is an error naming its line number.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Request>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{} line {}", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not a request object", path.display(), n + 1))?;
        out.push(req);
    }
    if out.is_empty() {
        bail!("{} holds no requests", path.display());
    }
    Ok(out)
}

impl DiffusionArgs {
    /// Folds the flags, over the model's `defaults` (its generation_config.json), into sampler
    /// options for a model of `arch`, once, before any loop.
    pub fn options(
        &self,
        c: &ChoiceArgs,
        arch: Architecture,
        defaults: &GenerationDefaults,
    ) -> anyhow::Result<DiffusionOptions> {
        if self.trace && !self.json {
            bail!("--trace needs --json");
        }
        let settings = SamplerSettings {
            steps: self.steps,
            sampler: self.sampler,
            temperature: c.temperature,
            top_p: c.top_p,
            top_k: c.top_k,
            threshold: self.threshold,
            block_length: self.block_length,
            exact: self.exact,
            cache: self.cache,
            family: FamilySettings {
                remasking: self.remasking,
                cfg_scale: self.cfg_scale,
                logits_eos_inf: self.logits_eos_inf.then_some(true),
                confidence_eos_eot_inf: self.confidence_eos_eot_inf.then_some(true),
                alg: self.alg,
                alg_temp: self.alg_temp,
                eps: self.eps,
            },
        };
        Ok(settings.with_defaults(defaults).options(arch)?)
    }
}

/// The canvas with masked positions as dim `░`, for `--show-steps` (ids space-separated when
/// there is no tokenizer).
fn draw(tok: Option<&Tokenizer>, tokens: &[u32], masked: &[bool]) -> String {
    let cells: Vec<String> = tokens
        .iter()
        .zip(masked)
        .map(|(&t, &m)| {
            if m {
                "\x1b[2m░\x1b[0m".to_string()
            } else {
                render(tok, &[t])
            }
        })
        .collect();
    cells.join(if tok.is_some() { "" } else { " " })
}

/// Samples every request and prints the results. `completion` (`dlm generate`) prints only the
/// generated part, and `length` falls back to the model's `max_new_tokens`, else 64.
pub fn run(
    model_dir: &Path,
    runtime: &RuntimeArgs,
    d: &DiffusionArgs,
    choice: &ChoiceArgs,
    requests: Vec<Request>,
    length: Option<usize>,
    completion: bool,
) -> anyhow::Result<()> {
    // A named sampler's flags are checked before the model loads; the family default after.
    if d.sampler.is_some() {
        d.options(choice, Architecture::Gpt2, &GenerationDefaults::default())?;
    }
    let m = load_model_for_inference(model_dir, runtime)?;
    let defaults = GenerationDefaults::load(model_dir)?;
    let opts = d.options(choice, m.config.arch, &defaults)?;
    let default_length = match completion {
        true => length.or(defaults.max_new_tokens).or(Some(DEFAULT_LENGTH)),
        false => length,
    };
    let device = runtime.device.open()?;
    let mask_id = mask_id(&m.config, model_dir, d.mask_id)?;
    let tokenizer = if model_dir.join("tokenizer.json").exists() {
        Some(super::args::load_tokenizer(model_dir)?)
    } else {
        None
    };
    let builder = CanvasBuilder {
        config: &m.config,
        tokenizer: tokenizer.as_ref(),
        mask_id,
        default_length,
    };
    let mut canvases = Vec::new();
    for (k, r) in requests.iter().enumerate() {
        let c = builder.build(r).with_context(|| format!("request {k}"))?;
        let n = c.num_masked();
        // A default T (dlm's or the model's) is clamped silently; a --steps the user gave, not.
        if d.steps.is_some() && opts.steps > n && !opts.sampler.is_family() {
            eprintln!("warning: request {k}: --steps {} > {n} masked positions; using {n} steps (each step commits at least one token)", opts.steps);
        }
        canvases.push(c);
    }
    // Group by length: one batched forward needs one canvas length.
    let mut order: Vec<usize> = (0..canvases.len()).collect();
    order.sort_by_key(|&k| canvases[k].len());
    let denoiser = Denoiser {
        model: m.model.as_ref(),
        device: &device,
        opts: &opts,
    };
    let mut rng = Rng::seed(choice.seed);
    let mut traces: Vec<Vec<serde_json::Value>> = vec![vec![]; canvases.len()];
    let mut steps = vec![0; canvases.len()];
    let start = std::time::Instant::now();
    let lens: Vec<usize> = canvases.iter().map(Canvas::len).collect();
    for group in order.chunk_by(|&a, &b| lens[a] == lens[b]) {
        for chunk in group.chunks(MAX_BATCH) {
            let mut batch: Vec<Canvas> = chunk.iter().map(|&k| canvases[k].clone()).collect();
            let mut shown: Vec<String> = batch
                .iter()
                .map(|c| draw(tokenizer.as_ref(), &c.ids, &c.masked))
                .collect();
            let mut on_step = |e: &StepEvent| {
                if d.trace {
                    traces[chunk[e.canvas]].push(json!({
                        "step": e.step, "tokens": e.tokens, "masked": e.masked,
                        "x0": e.x0, "confidence": e.ranks,
                    }));
                }
                if d.show_steps {
                    shown[e.canvas] = draw(tokenizer.as_ref(), e.tokens, e.masked);
                    eprint!(
                        "\x1b[2J\x1b[Hstep {}/{}\n\n{}\n",
                        e.step,
                        e.total_steps,
                        shown.join("\n\n")
                    );
                    let _ = std::io::stderr().flush();
                }
            };
            let report = denoiser.sample(&mut batch, &mut rng, &mut on_step)?;
            for (j, &k) in chunk.iter().enumerate() {
                steps[k] = report.steps[j];
                canvases[k] = batch[j].clone();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let out = std::io::stdout();
    let mut out = out.lock();
    for (k, c) in canvases.iter().enumerate() {
        let text_ids = if completion {
            completion_ids(c, &m.config).0
        } else {
            visible_ids(c, &m.config, builder.starts_with_bos(c))
        };
        let text = render(tokenizer.as_ref(), &text_ids);
        if d.json {
            let mut ids: Vec<u32> = c.generated().iter().map(|&i| c.ids[i]).collect();
            if d.variable_length {
                let special = [m.config.eos_token_id, m.config.pad_token_id];
                while ids.last().is_some_and(|t| special.contains(&Some(*t))) {
                    ids.pop();
                }
            }
            let mut v =
                json!({"index": k, "ids": ids, "canvas": c.ids, "text": text, "steps": steps[k]});
            if d.trace {
                v["trace"] = json!(traces[k]);
            }
            writeln!(out, "{v}")?;
        } else {
            writeln!(out, "{text}")?;
        }
    }
    let generated: usize = canvases.iter().map(|c| c.generated().len()).sum();
    eprintln!(
        "{} canvases, {generated} generated tokens in {secs:.2} s ({:.1} tokens/s)",
        canvases.len(),
        generated as f64 / secs
    );
    Ok(())
}
