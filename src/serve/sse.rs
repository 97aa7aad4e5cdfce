//! `stream: true`: server-sent events. After every denoising step an `event: step` carries the
//! canvas (`tokens`: one string per position, `null` where still masked; `fixed` marks given
//! positions); when a canvas is done, an unnamed event carries its final OpenAI-shaped chunk;
//! after the last one, `data: [DONE]`. A failure mid-stream is an `event: error` with the error
//! body, and the stream ends. Dropping the stream (the client left) cancels the jobs.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde_json::json;

use super::api::Prepared;
use super::queue::{JobEvent, Outcome, StepUpdate};
use super::routes::{finished, outcome_error, Submitted};
use super::ServerState;
use crate::sample::request::render;

struct Streaming {
    s: Arc<ServerState>,
    p: Prepared,
    sub: Submitted,
    left: usize,
    ended: bool,
}

/// One step of canvas `index` as an event.
fn step_event(st: &Streaming, index: usize, u: &StepUpdate) -> Event {
    let canvas = &st.p.canvases[index];
    let skip = usize::from(st.s.builder().starts_with_bos(canvas));
    let tok = st.s.tokenizer.as_deref();
    let tokens: Vec<Option<String>> = (skip..u.tokens.len())
        .map(|i| (!u.masked[i]).then(|| render(tok, &u.tokens[i..=i])))
        .collect();
    let data = json!({
        "index": index, "step": u.step, "total_steps": u.total_steps,
        "elapsed_ms": u.elapsed.as_secs_f64() * 1e3,
        "tokens": tokens, "fixed": canvas.fixed[skip..],
    });
    Event::default().event("step").data(data.to_string())
}

fn error_event(body: serde_json::Value) -> Event {
    Event::default().event("error").data(body.to_string())
}

async fn next(mut st: Streaming) -> Option<(Result<Event, Infallible>, Streaming)> {
    if st.ended {
        return None;
    }
    if st.left == 0 {
        st.ended = true;
        return Some((Ok(Event::default().data("[DONE]")), st));
    }
    let deadline = tokio::time::Instant::from_std(st.sub.deadline);
    let event = match tokio::time::timeout_at(deadline, st.sub.events.recv()).await {
        Ok(e) => e,
        Err(_) => Some((0, JobEvent::Done(Outcome::TimedOut))),
    };
    let out = match event {
        Some((index, JobEvent::Step(u))) => step_event(&st, index, &u),
        Some((index, JobEvent::Done(o))) => match finished(&st.s, &st.p, index, &o) {
            Some((choice, usage)) => {
                st.left -= 1;
                let chunk = super::api::chunk(&st.s, &st.p, &st.sub.id, choice, usage);
                Event::default().data(chunk.to_string())
            }
            None => {
                st.ended = true;
                error_event(outcome_error(&st.s, &o).body())
            }
        },
        None => {
            st.ended = true;
            let o = Outcome::Failed("the worker dropped the request".into());
            error_event(outcome_error(&st.s, &o).body())
        }
    };
    Some((Ok(out), st))
}

/// The event stream of a submitted request.
pub fn respond(
    s: Arc<ServerState>,
    p: Prepared,
    sub: Submitted,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let st = Streaming {
        left: p.canvases.len(),
        s,
        p,
        sub,
        ended: false,
    };
    Sse::new(stream::unfold(st, next)).keep_alive(KeepAlive::default())
}
