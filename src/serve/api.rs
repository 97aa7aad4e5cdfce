//! The request and response shapes: OpenAI's completions and chat completions, dlm's infill, and
//! dlm's own sampler fields. A request body is parsed once into `ApiRequest`, checked against the
//! server's limits before anything is allocated for it, and turned into canvases through
//! `sample::request`, the code `dlm generate` and `dlm infill` use.

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::ServerState;
use crate::sample::canvas::{parse_template, Canvas, TemplatePart};
use crate::sample::kv_reuse::CacheMode;
use crate::sample::options::DiffusionOptions;
use crate::sample::request::{
    completion_ids, render, span_ids, visible_ids, ChatMessage, Request, SamplerName,
    SamplerSettings,
};

/// A prompt: text or token ids, one or several (each becomes a choice).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, an array of strings, an array of token ids, or an array of those"
)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdsBatch(Vec<Vec<u32>>),
}

/// OpenAI's `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Every field any endpoint reads; each endpoint refuses the inputs that are not its own.
/// Unknown fields are ignored, as OpenAI clients send many.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiRequest {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    pub messages: Option<Vec<ChatMessage>>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub template: Option<String>,
    /// Infill: tokens between prefix and suffix.
    pub length: Option<usize>,
    /// Completions: generated positions (the canvas length is fixed; EOS ends the text early).
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub n: Option<usize>,
    pub stop: Option<Stop>,
    /// dlm: denoising steps (forwards); default one per generated token, at most the limit.
    pub steps: Option<usize>,
    pub sampler: Option<SamplerName>,
    pub threshold: Option<f32>,
    pub block_length: Option<usize>,
    /// dlm: the reference's full work (LM head on every row, all T forwards).
    #[serde(default)]
    pub exact: bool,
    /// dlm: reuse keys/values across a block's steps: "none", "prefix" or "dual" (approximate,
    /// as `--cache`).
    #[serde(default)]
    pub cache: CacheMode,
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completion,
    Chat,
    Infill,
}

impl Endpoint {
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

/// Parses a body: UTF-8 JSON of the right shape; errors name the field and what was wrong.
pub fn parse(body: &[u8]) -> Result<ApiRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::bad_request(format!(
            "the request body is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )));
    }
    // Serde would also read a struct from an array, by field order; only objects are requests.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let req: ApiRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the request body is not valid JSON: {inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("trailing data after the JSON object: {e}")))?;
    Ok(req)
}

fn refuse_fields(endpoint: &str, fields: &[(&str, bool)]) -> Result<(), ApiError> {
    match fields.iter().find(|(_, given)| *given) {
        Some((name, _)) => Err(ApiError::bad_request(format!(
            "`{name}` is not a field of {endpoint}"
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
    let requests: Vec<Request> = match endpoint {
        Endpoint::Completion => {
            refuse_fields(
                "/v1/completions",
                &[
                    ("messages", r.messages.is_some()),
                    ("template", r.template.is_some()),
                    ("prefix", r.prefix.is_some()),
                    ("suffix", r.suffix.is_some()),
                    ("length", r.length.is_some()),
                ],
            )?;
            let length = Some(r.max_tokens.unwrap_or(lim.default_max_tokens));
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
            refuse_fields(
                "/v1/chat/completions",
                &[
                    ("prompt", r.prompt.is_some()),
                    ("template", r.template.is_some()),
                    ("prefix", r.prefix.is_some()),
                    ("suffix", r.suffix.is_some()),
                    ("length", r.length.is_some()),
                ],
            )?;
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
                length: Some(r.max_tokens.unwrap_or(lim.default_max_tokens)),
                ..Default::default()
            }]
        }
        Endpoint::Infill => {
            refuse_fields(
                "/v1/infill",
                &[
                    ("prompt", r.prompt.is_some()),
                    ("messages", r.messages.is_some()),
                    ("max_tokens", r.max_tokens.is_some()),
                ],
            )?;
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
    let steps = r.steps.unwrap_or(masked.min(lim.max_steps));
    limit("steps", steps, lim.max_steps)?;
    let settings = SamplerSettings {
        steps,
        sampler: r.sampler.unwrap_or(SamplerName::TopkConfidence),
        temperature: r.temperature.unwrap_or(0.0),
        top_p: r.top_p,
        top_k: r.top_k,
        threshold: r.threshold,
        block_length: r.block_length,
        exact: r.exact,
        cache: r.cache,
    };
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
        opts: settings.options()?,
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

/// A finished canvas as the endpoint's choice object, with its completion-token count.
pub fn choice(s: &ServerState, p: &Prepared, index: usize, c: &Canvas) -> (Value, usize) {
    let tok = s.tokenizer.as_deref();
    match p.endpoint {
        Endpoint::Completion | Endpoint::Chat => {
            let (ids, eos) = completion_ids(c, &s.config);
            let mut text = render(tok, &ids);
            let mut stopped = eos;
            if let Some(cut) = p.stop.iter().filter_map(|st| text.find(st.as_str())).min() {
                text.truncate(cut);
                stopped = true;
            }
            let finish = if stopped { "stop" } else { "length" };
            let v = if p.endpoint == Endpoint::Chat {
                json!({"index": index, "message": {"role": "assistant", "content": text},
                       "finish_reason": finish})
            } else {
                json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish})
            };
            (v, ids.len())
        }
        Endpoint::Infill => {
            let builder = s.builder();
            let text = render(tok, &visible_ids(c, &s.config, builder.starts_with_bos(c)));
            let fills: Vec<String> = span_ids(c).iter().map(|ids| render(tok, ids)).collect();
            let n = c.generated().len();
            (
                json!({"index": index, "text": text, "fills": fills, "finish_reason": "length"}),
                n,
            )
        }
    }
}

/// The response object around finished choices.
pub fn response(
    s: &ServerState,
    p: &Prepared,
    id: &str,
    choices: Vec<Value>,
    usage: Usage,
) -> Value {
    let object = match p.endpoint {
        Endpoint::Completion => "text_completion",
        Endpoint::Chat => "chat.completion",
        Endpoint::Infill => "infill",
    };
    json!({
        "id": id,
        "object": object,
        "created": super::unix_time(),
        "model": s.name,
        "choices": choices,
        "usage": usage.json(),
    })
}

/// Token counts and timings of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub steps: usize,
    pub queued_ms: f64,
    pub elapsed_ms: f64,
    pub batch: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "dlm": {"steps": self.steps, "queued_ms": self.queued_ms,
                    "elapsed_ms": self.elapsed_ms, "batch": self.batch},
        })
    }
}

/// The streamed form of one finished choice: an OpenAI chunk (`delta` for chat).
pub fn chunk(s: &ServerState, p: &Prepared, id: &str, choice: Value, usage: Usage) -> Value {
    let (object, choice) = match p.endpoint {
        Endpoint::Completion => ("text_completion", choice),
        Endpoint::Infill => ("infill", choice),
        Endpoint::Chat => {
            let mut c = choice;
            if let Some(m) = c.as_object_mut().and_then(|o| o.remove("message")) {
                c["delta"] = m;
            }
            ("chat.completion.chunk", c)
        }
    };
    json!({
        "id": id, "object": object, "created": super::unix_time(), "model": s.name,
        "choices": [choice], "usage": usage.json(),
    })
}
