//! From what a user asks for to canvases and back to text: sampler settings folded into
//! `DiffusionOptions`, requests (text, token ids, `<|mask:N|>` templates; chat turns are rendered
//! by `data::chat`) turned into canvases, and finished canvases turned into text. `dlm generate`,
//! `dlm infill` and `dlm serve` all go through here, so a flag and a request field mean the same
//! thing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::canvas::{parse_template, Canvas, Segment, TemplatePart};
use super::family::{family_sampler, FamilySettings};
use super::filter::TokenChoice;
use super::generation_config::GenerationDefaults;
use super::head_rows::HeadRows;
use super::kv_reuse::CacheMode;
use super::options::{DiffusionOptions, Sampler};
use super::unmask::Rule;
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, OptionMessage, Result};
use crate::model::{Architecture, ModelConfig};
use crate::named::{display_and_from_str, Named};

/// The commit rules by the names users type (`--sampler`, a request's `sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerName {
    TopkConfidence,
    RandomKeep,
    Confidence,
    Margin,
    Entropy,
    Random,
    Llada,
    Dream,
}

impl Named for SamplerName {
    const WHAT: &'static str = "sampler";
    const ALL: &'static [Self] = &[
        Self::TopkConfidence,
        Self::RandomKeep,
        Self::Confidence,
        Self::Margin,
        Self::Entropy,
        Self::Random,
        Self::Llada,
        Self::Dream,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::TopkConfidence => "topk-confidence",
            Self::RandomKeep => "random-keep",
            Self::Confidence => "confidence",
            Self::Margin => "margin",
            Self::Entropy => "entropy",
            Self::Random => "random",
            Self::Llada => "llada",
            Self::Dream => "dream",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::TopkConfidence => {
                "Reference (eval scripts): floor(N·t/T) lowest-confidence positions stay masked"
            }
            Self::RandomKeep => {
                "Reference (quick-start): each masked position commits with probability 1/(t+1)"
            }
            Self::Confidence => "Commit the most confident masked positions, linear schedule",
            Self::Margin => "Commit by top-1 minus top-2 probability",
            Self::Entropy => "Commit the lowest-entropy positions",
            Self::Random => "Commit in random order",
            Self::Llada => "LLaDA's generate() (the default for LLaDA models)",
            Self::Dream => "Dream's diffusion_generate() (the default for Dream models)",
        }
    }
}
display_and_from_str!(SamplerName);

impl SamplerName {
    pub fn sampler(self) -> Sampler {
        match self {
            SamplerName::TopkConfidence => Sampler::TopkConfidence,
            SamplerName::RandomKeep => Sampler::RandomKeep,
            SamplerName::Confidence => Sampler::Ranked(Rule::Confidence),
            SamplerName::Margin => Sampler::Ranked(Rule::Margin),
            SamplerName::Entropy => Sampler::Ranked(Rule::Entropy),
            SamplerName::Random => Sampler::Ranked(Rule::Random),
            SamplerName::Llada => Sampler::Llada(Default::default()),
            SamplerName::Dream => Sampler::Dream(Default::default()),
        }
    }
}

/// T when neither the user nor the model's generation_config.json says.
pub const DEFAULT_STEPS: usize = 64;

/// Sampler settings as given (flags or request fields), before they are folded; None where the
/// user left a setting out (`with_defaults` fills those from the model's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSettings {
    /// None: the model's default, else `DEFAULT_STEPS`.
    pub steps: Option<usize>,
    /// None: the model family's own (`family_sampler`).
    pub sampler: Option<SamplerName>,
    /// 0 means greedy; None: the model's default, else greedy.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub threshold: Option<f32>,
    pub block_length: Option<usize>,
    /// Run the LM head on every row, all T forwards (the reference's work).
    pub exact: bool,
    /// Reuse keys and values across the steps of a block (approximate).
    pub cache: CacheMode,
    pub family: FamilySettings,
}

impl SamplerSettings {
    /// These settings with what the user left out taken from the model's generation defaults
    /// (`GenerationDefaults::for_sampler`: another sampler than the defaults' keeps only steps).
    pub fn with_defaults(self, defaults: &GenerationDefaults) -> Self {
        let g = defaults.for_sampler(self.sampler);
        Self {
            steps: self.steps.or(g.steps),
            sampler: self.sampler.or(g.sampler),
            temperature: self.temperature.or(g.temperature.map(|t| t as f32)),
            top_p: self.top_p.or(g.top_p.map(|p| p as f32)),
            top_k: self.top_k.or(g.top_k),
            block_length: self.block_length.or(g.block_length),
            ..self
        }
    }

    /// Folds the settings into sampler options for a model of `arch`, once, before any loop;
    /// every inconsistency is an `Error::InvalidOption` naming the setting.
    pub fn options(&self, arch: Architecture) -> Result<DiffusionOptions> {
        let temperature = self.temperature.unwrap_or(0.0);
        if !temperature.is_finite() || temperature < 0.0 {
            let t = temperature;
            let rest = format!("{t} must be a finite number ≥ 0 (0 is greedy)");
            return Err(Error::option("temperature", rest));
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(Error::option("top_p", format!("{p} is not in (0, 1]")));
        }
        if self.top_k == Some(0) {
            return Err(Error::option("top_k", "must be at least 1"));
        }
        let (family_default, shift) = family_sampler(arch);
        let name = self.sampler.unwrap_or(family_default);
        let sampler = self.family.apply(name.sampler(), self.top_p, self.top_k)?;
        if sampler == Sampler::TopkConfidence && (self.top_p.is_some() || self.top_k.is_some()) {
            return Err(Error::InvalidOption(
                OptionMessage::default()
                    .setting("sampler")
                    .text(" topk-confidence samples from the tempered softmax without ")
                    .setting("top_p")
                    .text("/")
                    .setting("top_k")
                    .text(" (reference-semantics §2.2); drop them or pick another sampler"),
            ));
        }
        let opts = DiffusionOptions {
            steps: self.steps.unwrap_or(DEFAULT_STEPS),
            sampler,
            choice: TokenChoice::from_flags(temperature, self.top_k, self.top_p),
            shift,
            threshold: self.threshold,
            block_length: self.block_length,
            head_rows: HeadRows::exact_if(self.exact),
            cache: self.cache,
        };
        opts.validate()?;
        Ok(opts)
    }
}

/// One canvas to fill: a prompt (prefix) and/or suffix as text or ids with a length, or a
/// template. The fields of a `--input` JSONL line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub prompt: Option<String>,
    pub prompt_ids: Option<Vec<u32>>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub suffix_ids: Option<Vec<u32>>,
    pub template: Option<String>,
    pub length: Option<usize>,
}

/// The model's mask id (`flag` overrides the config), or an error saying how to set one.
pub fn mask_id(config: &ModelConfig, model_dir: &Path, flag: Option<u32>) -> Result<u32> {
    flag.or(config.mask_token_id).ok_or_else(|| {
        Error::Input(format!(
            "{} has no mask token: diffusion sampling needs one. Add \"mask_token_id\": ID to its \
             config.json (an adapted DiffuGPT/DiffuLLaMA checkpoint records it) or pass --mask-id ID",
            model_dir.display()
        ))
    })
}

/// Builds canvases from requests: text is tokenised (BOS first when the model has one), ids are
/// used as given.
pub struct CanvasBuilder<'a> {
    pub config: &'a ModelConfig,
    pub tokenizer: Option<&'a Tokenizer>,
    pub mask_id: u32,
    pub default_length: Option<usize>,
}

impl CanvasBuilder<'_> {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self.tokenizer {
            Some(tok) => tok.encode(text),
            None => Err(Error::Input(
                "the model has no tokenizer.json; pass token ids instead of text".into(),
            )),
        }
    }

    /// The BOS token put before text prompts, when the model has a usable one.
    pub fn bos(&self) -> Vec<u32> {
        let cfg = self.config;
        cfg.bos_token_id
            .filter(|&b| (b as usize) < cfg.vocab_size && b != self.mask_id)
            .into_iter()
            .collect()
    }

    /// Whether position 0 of `c` is the BOS this builder put there (hidden from text output).
    pub fn starts_with_bos(&self, c: &Canvas) -> bool {
        c.fixed[0] && self.bos().first() == Some(&c.ids[0])
    }

    pub fn build(&self, r: &Request) -> Result<Canvas> {
        if let Some(t) = &r.template {
            let mut segs = vec![Segment::Fixed(self.bos())];
            for part in parse_template(t)? {
                segs.push(match part {
                    TemplatePart::Text(s) => Segment::Fixed(self.encode(&s)?),
                    TemplatePart::Mask(n) => Segment::Masked(n),
                });
            }
            segs.retain(|s| !matches!(s, Segment::Fixed(v) if v.is_empty()));
            return Canvas::from_segments(&segs, self.mask_id);
        }
        let length = r
            .length
            .or(self.default_length)
            .ok_or_else(|| Error::Input("a length (tokens to generate) is required".into()))?;
        let text = r.prompt.as_ref().or(r.prefix.as_ref());
        let prefix = match (&r.prompt_ids, text) {
            (Some(ids), _) => ids.clone(),
            (None, Some(t)) => [self.bos(), self.encode(t)?].concat(),
            (None, None) => self.bos(),
        };
        let suffix = match (&r.suffix_ids, &r.suffix) {
            (Some(ids), _) => ids.clone(),
            (None, Some(t)) => self.encode(t)?,
            (None, None) => vec![],
        };
        Canvas::infill(&prefix, length, &suffix, self.mask_id)
    }
}

/// The shown tokens of a finished canvas: fixed and generated tokens (after position 0 when
/// `skip_first`), generation stopping at the first EOS in a generated position, pads hidden.
pub fn visible_ids(c: &Canvas, cfg: &ModelConfig, skip_first: bool) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, &t) in c.ids.iter().enumerate().skip(usize::from(skip_first)) {
        if !c.fixed[i] && Some(t) == cfg.eos_token_id {
            break;
        }
        if !c.fixed[i] && Some(t) == cfg.pad_token_id {
            continue;
        }
        out.push(t);
    }
    out
}

/// A completion: the tokens from the first generated position up to the first EOS, and whether
/// an EOS ended it (variable-length output from a fixed-length canvas).
pub fn completion_ids(c: &Canvas, cfg: &ModelConfig) -> (Vec<u32>, bool) {
    let first_gen = c.generated().first().copied().unwrap_or(c.len());
    let gen = &c.ids[first_gen..];
    match gen.iter().position(|&t| Some(t) == cfg.eos_token_id) {
        Some(cut) => (gen[..cut].to_vec(), true),
        None => (gen.to_vec(), false),
    }
}

/// Each masked span's tokens, in order (what an infill request filled in).
pub fn span_ids(c: &Canvas) -> Vec<Vec<u32>> {
    let mut spans: Vec<Vec<u32>> = Vec::new();
    for (i, &t) in c.ids.iter().enumerate() {
        if c.fixed[i] {
            continue;
        }
        match spans.last_mut() {
            Some(s) if i > 0 && !c.fixed[i - 1] => s.push(t),
            _ => spans.push(vec![t]),
        }
    }
    spans
}

/// Text of `ids`, or the ids space-separated when there is no tokenizer (or they do not decode).
pub fn render(tok: Option<&Tokenizer>, ids: &[u32]) -> String {
    match tok.map(|t| t.decode(ids)) {
        Some(Ok(s)) => s,
        _ => ids
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Valid settings to vary in the option checks: 4 greedy confidence steps, nothing else set.
    pub(crate) fn greedy_confidence() -> SamplerSettings {
        SamplerSettings {
            steps: Some(4),
            sampler: Some(SamplerName::Confidence),
            temperature: Some(0.0),
            top_p: None,
            top_k: None,
            threshold: None,
            block_length: None,
            exact: false,
            cache: CacheMode::None,
            family: FamilySettings::default(),
        }
    }

    #[test]
    fn spans_are_split_at_fixed_tokens() {
        let mut c = Canvas::from_segments(
            &[
                Segment::Fixed(vec![1]),
                Segment::Masked(2),
                Segment::Fixed(vec![2]),
                Segment::Masked(1),
            ],
            9,
        )
        .unwrap();
        c.ids = vec![1, 5, 6, 2, 7];
        assert_eq!(span_ids(&c), vec![vec![5, 6], vec![7]]);
    }

    #[test]
    fn option_names_are_the_same_for_flags_and_request_fields() {
        for &s in SamplerName::ALL {
            assert_eq!(s.to_string().parse::<SamplerName>().unwrap(), s);
            assert_eq!(
                serde_json::from_value::<SamplerName>(s.name().into()).unwrap(),
                s
            );
        }
        for &c in CacheMode::ALL {
            assert_eq!(c.to_string().parse::<CacheMode>().unwrap(), c);
            assert_eq!(
                serde_json::from_value::<CacheMode>(c.name().into()).unwrap(),
                c
            );
        }
        let e = "topk".parse::<SamplerName>().unwrap_err().to_string();
        assert!(
            e.contains("\"topk\"") && e.contains("topk-confidence, random-keep"),
            "{e}"
        );
    }

    #[test]
    fn settings_are_checked_before_sampling() {
        let ok = greedy_confidence();
        let gpt2 = Architecture::Gpt2;
        assert!(ok.options(gpt2).is_ok());
        let bad = [
            SamplerSettings {
                temperature: Some(-1.0),
                ..ok.clone()
            },
            SamplerSettings {
                top_p: Some(1.5),
                ..ok.clone()
            },
            SamplerSettings {
                steps: Some(0),
                ..ok.clone()
            },
            SamplerSettings {
                sampler: Some(SamplerName::TopkConfidence),
                top_k: Some(3),
                ..ok.clone()
            },
        ];
        for s in bad {
            assert!(s.options(gpt2).is_err(), "{s:?}");
        }
    }
}
