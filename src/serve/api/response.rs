//! The response objects: a finished canvas as an endpoint's choice, the response around the
//! choices, the streamed chunk, and the usage counts.

use serde_json::{json, Value};

use super::{Endpoint, Prepared};
use crate::sample::canvas::Canvas;
use crate::sample::request::{completion_ids, render, span_ids, visible_ids};
use crate::serve::ServerState;

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
        "created": crate::serve::unix_time(),
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
        "id": id, "object": object, "created": crate::serve::unix_time(), "model": s.name,
        "choices": [choice], "usage": usage.json(),
    })
}
