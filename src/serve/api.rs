//! The request and response shapes: OpenAI's completions and chat completions, dlm's infill, and
//! dlm's own sampler fields. A request body is parsed once into `ApiRequest` (`request`), checked
//! against the server's limits before anything is allocated for it, and turned into canvases
//! through `sample::request`, the code `dlm generate` and `dlm infill` use; finished canvases
//! become choices and responses in `response`.

mod request;
mod response;

use super::error::ApiError;
use super::ServerState;
use crate::sample::canvas::{parse_template, Canvas, TemplatePart};
use crate::sample::family::FamilySettings;
use crate::sample::options::DiffusionOptions;
use crate::sample::request::{Request, SamplerSettings};
pub use request::{parse, ApiRequest, Prompt, Stop};
pub use response::{choice, chunk, response, Usage};

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completion,
    Chat,
    Infill,
}

impl Endpoint {
    /// The route it is served at.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completion => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Infill => "/v1/infill",
        }
    }

    /// The endpoint-specific request fields that belong to other endpoints.
    fn refused_fields(self) -> &'static [&'static str] {
        match self {
            Endpoint::Completion => &["messages", "template", "prefix", "suffix", "length"],
            Endpoint::Chat => &["prompt", "template", "prefix", "suffix", "length"],
            Endpoint::Infill => &["prompt", "messages", "max_tokens"],
        }
    }

    pub fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Completion => "cmpl",
            Endpoint::Chat => "chatcmpl",
            Endpoint::Infill => "infill",
        }
    }
}

/// A request checked and turned into canvases.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub endpoint: Endpoint,
    pub canvases: Vec<Canvas>,
    pub opts: DiffusionOptions,
    pub seed: u64,
    pub stream: bool,
    pub stop: Vec<String>,
}

/// Refuses a request that gives a field of another endpoint, naming the first such field.
fn refuse_fields(endpoint: Endpoint, r: &ApiRequest) -> Result<(), ApiError> {
    let refused = endpoint.refused_fields();
    match r
        .inputs_given()
        .into_iter()
        .find(|(name, given)| *given && refused.contains(name))
    {
        Some((name, _)) => Err(ApiError::bad_request(format!(
            "`{name}` is not a field of {}",
            endpoint.path()
        ))),
        None => Ok(()),
    }
}

fn limit(what: &str, value: usize, max: usize) -> Result<(), ApiError> {
    if value > max {
        return Err(ApiError::bad_request(format!(
            "{what} {value} is over this server's limit of {max}"
        )));
    }
    Ok(())
}

/// Checks `r` against the limits and builds its canvases. Sizes are checked before the canvases
/// are allocated, so a huge `max_tokens` or `<|mask:N|>` costs nothing.
pub fn prepare(s: &ServerState, endpoint: Endpoint, r: &ApiRequest) -> Result<Prepared, ApiError> {
    let lim = &s.limits;
    if let Some(n) = r.n.filter(|&n| n != 1) {
        return Err(ApiError::bad_request(format!(
            "n = {n}: one choice per prompt; send an array of prompts for several"
        )));
    }
    refuse_fields(endpoint, r)?;
    // (Every sampler keeps the model's generated length: no `for_sampler` needed.)
    let max_tokens = r
        .max_tokens
        .or(s.generation.max_new_tokens)
        .unwrap_or(lim.default_max_tokens);
    let requests: Vec<Request> = match endpoint {
        Endpoint::Completion => {
            let length = Some(max_tokens);
            let one = |prompt: Option<String>, prompt_ids: Option<Vec<u32>>| Request {
                prompt,
                prompt_ids,
                length,
                ..Default::default()
            };
            match &r.prompt {
                None => return Err(ApiError::bad_request("`prompt` is required")),
                Some(Prompt::Text(t)) => vec![one(Some(t.clone()), None)],
                Some(Prompt::Texts(ts)) => ts.iter().map(|t| one(Some(t.clone()), None)).collect(),
                Some(Prompt::Ids(ids)) => vec![one(None, Some(ids.clone()))],
                Some(Prompt::IdsBatch(b)) => {
                    b.iter().map(|ids| one(None, Some(ids.clone()))).collect()
                }
            }
        }
        Endpoint::Chat => {
            let messages = r
                .messages
                .as_ref()
                .ok_or_else(|| ApiError::bad_request("`messages` is required"))?;
            let template = s
                .chat
                .as_ref()
                .map_err(|e| ApiError::bad_request(format!("this model cannot chat: {e}")))?;
            vec![Request {
                prompt: Some(template.render(messages)?),
                length: Some(max_tokens),
                ..Default::default()
            }]
        }
        Endpoint::Infill => {
            let spans = r.prefix.is_some() || r.suffix.is_some() || r.length.is_some();
            match (&r.template, spans) {
                (Some(_), true) => {
                    return Err(ApiError::bad_request(
                        "give either `template` or `prefix`/`suffix`/`length`, not both",
                    ))
                }
                (None, false) => {
                    return Err(ApiError::bad_request(
                        "give `template` (text with <|mask:N|> spans) or `prefix`, `suffix` and `length`",
                    ))
                }
                (None, true) if r.length.is_none() => {
                    return Err(ApiError::bad_request("`length` is required with prefix/suffix"))
                }
                _ => {}
            }
            vec![Request {
                prefix: r.prefix.clone(),
                suffix: r.suffix.clone(),
                template: r.template.clone(),
                length: r.length,
                ..Default::default()
            }]
        }
    };
    if requests.is_empty() {
        return Err(ApiError::bad_request("`prompt` is an empty array"));
    }
    limit("the number of prompts", requests.len(), lim.max_prompts)?;
    let mut canvases = Vec::with_capacity(requests.len());
    for (k, q) in requests.iter().enumerate() {
        let which = |e: ApiError| match requests.len() {
            1 => e,
            _ => ApiError::bad_request(format!("prompt {k}: {}", e.message)),
        };
        canvases.push(canvas(s, q).map_err(which)?);
    }
    let masked = canvases.iter().map(Canvas::num_masked).max().unwrap_or(0);
    let mut settings = SamplerSettings {
        steps: r.steps,
        sampler: r.sampler,
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k,
        threshold: r.threshold,
        block_length: r.block_length,
        exact: r.exact,
        cache: r.cache,
        family: FamilySettings {
            remasking: r.remasking,
            cfg_scale: r.cfg_scale,
            logits_eos_inf: r.logits_eos_inf,
            confidence_eos_eot_inf: r.confidence_eos_eot_inf,
            alg: r.alg,
            alg_temp: r.alg_temp,
            eps: r.eps,
        },
    }
    .with_defaults(&s.generation);
    // Without a default, one step per generated token, at most the limit.
    let steps = settings.steps.unwrap_or(masked.min(lim.max_steps));
    limit("steps", steps, lim.max_steps)?;
    settings.steps = Some(steps);
    let stop = match &r.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad_request("`stop` strings must not be empty"));
    }
    Ok(Prepared {
        endpoint,
        canvases,
        opts: settings.options(s.config.arch)?,
        seed: r.seed.unwrap_or(0),
        stream: r.stream,
        stop,
    })
}

/// One canvas, within the limits.
fn canvas(s: &ServerState, q: &Request) -> Result<Canvas, ApiError> {
    let max = s.limits.max_canvas;
    let empty = |t: &Option<String>| t.as_deref().is_some_and(|t| t.trim().is_empty());
    if empty(&q.prompt) || q.prompt_ids.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::bad_request(
            "the prompt is empty; give some text (or use /v1/infill with a template like \
             \"<|mask:16|>\" for unconditional generation)",
        ));
    }
    let generated = match &q.template {
        Some(t) => parse_template(t)?
            .iter()
            .map(|p| match p {
                // Saturating: a span so long that the sum overflows is over the limit anyway.
                TemplatePart::Mask(n) => *n,
                TemplatePart::Text(_) => 0,
            })
            .fold(0usize, usize::saturating_add),
        None => q.length.unwrap_or(0),
    };
    if generated == 0 && q.template.is_none() {
        return Err(ApiError::bad_request(
            "max_tokens (or length) must be at least 1",
        ));
    }
    limit("the number of tokens to generate", generated, max)?;
    let vocab = s.config.vocab_size;
    for ids in [&q.prompt_ids, &q.suffix_ids].into_iter().flatten() {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ApiError::bad_request(format!(
                "token id {bad} is outside the model's vocabulary ({vocab})"
            )));
        }
    }
    let c = s.builder().build(q)?;
    if c.len() > max {
        return Err(ApiError::bad_request(format!(
            "the canvas has {} positions (prompt, suffix and generated tokens), over this \
             server's limit of {max}; shorten the prompt or ask for fewer tokens",
            c.len()
        )));
    }
    Ok(c)
}
