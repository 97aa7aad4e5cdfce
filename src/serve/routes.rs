//! The routes: the playground page, health and model listing, and the three sampling endpoints,
//! which parse and check a request, queue one job per canvas, then answer with JSON or hand the
//! job events to `sse`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::{self, Endpoint, Prepared, Usage};
use super::error::ApiError;
use super::queue::{Job, JobEvent, Outcome};
use super::{json_response, ServerState};

type AppState = Arc<ServerState>;

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/", get(playground))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/infill", post(infill))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn playground() -> Html<&'static str> {
    Html(include_str!("playground.html"))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; see GET /v1/models, POST /v1/completions, /v1/chat/completions, /v1/infill",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method (sampling routes take POST, the others GET)",
    )
}

async fn health(State(s): State<AppState>) -> Response {
    let q = &s.queue;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let st = &q.stats;
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "model": s.name,
            "queue": {"waiting": q.len(), "capacity": q.capacity, "running": n(&st.running),
                      "max_batch": q.max_batch},
            "jobs": {"completed": n(&st.completed), "cancelled": n(&st.cancelled),
                     "timed_out": n(&st.timed_out), "failed": n(&st.failed),
                     "rejected_requests": n(&st.rejected)},
            "batches": {"count": n(&st.batches), "canvases": n(&st.batched),
                        "forwards": n(&st.forwards)},
        }),
    )
}

async fn models(State(s): State<AppState>) -> Response {
    let c = &s.config;
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{
            "id": s.name, "object": "model", "created": s.created, "owned_by": "dlm",
            "dlm": {"architecture": c.arch.to_string(), "vocab_size": c.vocab_size,
                    "context": c.max_position_embeddings, "mask_token_id": s.mask_id,
                    "tokenizer": s.tokenizer.is_some(), "chat": s.chat.is_ok(),
                    "limits": {"max_canvas": s.limits.max_canvas, "max_steps": s.limits.max_steps,
                               "max_prompts": s.limits.max_prompts,
                               "max_body_bytes": s.limits.max_body_bytes,
                               "request_timeout_s": s.limits.request_timeout.as_secs_f64()}},
        }]}),
    )
}

async fn completions(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    handle(s, Endpoint::Completion, body).await
}

async fn chat(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    handle(s, Endpoint::Chat, body).await
}

async fn infill(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    handle(s, Endpoint::Infill, body).await
}

/// Sets the jobs' cancel flag when dropped: when the handler's future or the event stream is
/// dropped because the client went away, the worker stops their canvases at the next step.
pub struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A request in the queue: its events, and the guard that cancels it.
pub struct Submitted {
    pub events: UnboundedReceiver<(usize, JobEvent)>,
    pub guard: CancelOnDrop,
    pub deadline: Instant,
    pub id: String,
}

fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over this server's limit of {limit} bytes"),
        );
    }
    ApiError::new(e.status(), format!("cannot read the request body: {e}"))
}

async fn handle(s: AppState, endpoint: Endpoint, body: Result<Bytes, BytesRejection>) -> Response {
    let arrived = Instant::now();
    let prepared = body
        .map_err(|e| body_error(e, s.limits.max_body_bytes))
        .and_then(|b| api::parse(&b))
        .and_then(|r| api::prepare(&s, endpoint, &r));
    let p = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let sub = match submit(&s, &p, arrived) {
        Ok(sub) => sub,
        Err(e) => return e.into_response(),
    };
    if p.stream {
        return super::sse::respond(s, p, sub).into_response();
    }
    match collect(&s, &p, sub).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

/// Queues one job per canvas, all or none.
fn submit(s: &ServerState, p: &Prepared, arrived: Instant) -> Result<Submitted, ApiError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let deadline = arrived + s.limits.request_timeout;
    let jobs = p
        .canvases
        .iter()
        .enumerate()
        .map(|(index, canvas)| Job {
            canvas: canvas.clone(),
            opts: p.opts.clone(),
            seed: p.seed.wrapping_add(index as u64),
            deadline,
            cancel: cancel.clone(),
            stream_steps: p.stream,
            index,
            events: tx.clone(),
            enqueued: arrived,
        })
        .collect();
    s.queue.submit(jobs).map_err(|full| {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the queue is full ({} canvases waiting, capacity {}); retry later",
                full.waiting, s.queue.capacity
            ),
        );
        e.retry_after = Some(1);
        e
    })?;
    Ok(Submitted {
        events: rx,
        guard: CancelOnDrop(cancel),
        deadline,
        id: format!("{}-{}", p.endpoint.id_prefix(), s.next_id()),
    })
}

/// The error answer for a job that did not finish.
pub fn outcome_error(s: &ServerState, o: &Outcome) -> ApiError {
    match o {
        Outcome::TimedOut => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request ran over this server's time limit of {:.1} s; ask for fewer steps \
                 or tokens",
                s.limits.request_timeout.as_secs_f64()
            ),
        ),
        Outcome::Cancelled => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cancelled"),
        Outcome::Failed(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m.clone()),
        Outcome::Done { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "not an error"),
    }
}

/// A finished job's choice and usage.
pub fn finished(
    s: &ServerState,
    p: &Prepared,
    index: usize,
    o: &Outcome,
) -> Option<(serde_json::Value, Usage)> {
    let Outcome::Done {
        canvas,
        steps,
        queued,
        elapsed,
        batch,
    } = o
    else {
        return None;
    };
    let (choice, completion_tokens) = api::choice(s, p, index, canvas);
    let usage = Usage {
        prompt_tokens: canvas.len() - canvas.generated().len(),
        completion_tokens,
        steps: *steps,
        queued_ms: queued.as_secs_f64() * 1e3,
        elapsed_ms: elapsed.as_secs_f64() * 1e3,
        batch: *batch,
    };
    Some((choice, usage))
}

/// Waits for every job of a non-streaming request, within its time limit.
async fn collect(
    s: &ServerState,
    p: &Prepared,
    mut sub: Submitted,
) -> Result<serde_json::Value, ApiError> {
    let n = p.canvases.len();
    let mut choices = vec![serde_json::Value::Null; n];
    let mut usage = Usage::default();
    let mut left = n;
    let timeout = outcome_error(s, &Outcome::TimedOut);
    while left > 0 {
        let deadline = tokio::time::Instant::from_std(sub.deadline);
        let event = tokio::time::timeout_at(deadline, sub.events.recv())
            .await
            .map_err(|_| timeout.clone())?;
        let (index, o) = match event {
            Some((index, JobEvent::Done(o))) => (index, o),
            Some((_, JobEvent::Step(_))) => continue,
            None => {
                return Err(outcome_error(
                    s,
                    &Outcome::Failed("the worker dropped the request".into()),
                ))
            }
        };
        let (choice, u) = finished(s, p, index, &o).ok_or_else(|| outcome_error(s, &o))?;
        choices[index] = choice;
        usage.prompt_tokens += u.prompt_tokens;
        usage.completion_tokens += u.completion_tokens;
        usage.steps = usage.steps.max(u.steps);
        usage.queued_ms = usage.queued_ms.max(u.queued_ms);
        usage.elapsed_ms = usage.elapsed_ms.max(u.elapsed_ms);
        usage.batch = usage.batch.max(u.batch);
        left -= 1;
    }
    Ok(api::response(s, p, &sub.id, choices, usage))
}
