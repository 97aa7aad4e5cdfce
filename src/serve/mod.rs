//! `dlm serve`: an HTTP API over one loaded model (OpenAI-shaped completions and chat
//! completions, infilling, server-sent step events) and a web playground that shows the canvas
//! denoising. The model is loaded once and owned by a single worker thread (`queue`); handlers
//! (`routes`) parse and check requests (`api`), queue one job per canvas and answer with JSON or
//! an event stream (`sse`). `client` is the small HTTP client of the load test and the tests.
//!
//! Failure policy: bad input is a 4xx answer that says what was wrong, a full queue is 503 with
//! Retry-After, a request over its time limit is 504, and no request can take the server down.

pub mod api;
pub mod client;
pub mod error;
pub mod queue;
pub mod routes;
pub mod sse;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use candle_core::Device;

use crate::data::chat::ChatTemplate;
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::model::{LoadedModel, ModelConfig};
use crate::sample::generation_config::GenerationDefaults;
use crate::sample::request::{mask_id, CanvasBuilder};
use queue::Queue;

/// What the server accepts and how much it takes on.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Request bodies over this many bytes are refused (413).
    pub max_body_bytes: usize,
    /// Canvas positions (prompt + generated + suffix); at most the model's context.
    pub max_canvas: usize,
    pub max_steps: usize,
    /// Prompts in one request.
    pub max_prompts: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Canvases waiting at most; more are refused (503).
    pub queue_capacity: usize,
    /// Canvases sampled in one batched forward, at most.
    pub max_batch: usize,
    /// From arrival to answer; the work stops when it runs out (504).
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_canvas: 1024,
            max_steps: 1024,
            max_prompts: 16,
            default_max_tokens: 16,
            queue_capacity: 64,
            max_batch: 16,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// What every handler shares.
pub struct ServerState {
    /// The model's name in responses (`model`) and `GET /v1/models`.
    pub name: String,
    pub config: ModelConfig,
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// The chat template, or why the model cannot chat.
    pub chat: std::result::Result<ChatTemplate, String>,
    pub mask_id: u32,
    /// The model's generation_config.json: what a request leaves out.
    pub generation: GenerationDefaults,
    pub limits: Limits,
    pub queue: Arc<Queue>,
    pub created: u64,
    ids: AtomicU64,
}

impl ServerState {
    pub fn builder(&self) -> CanvasBuilder<'_> {
        CanvasBuilder {
            config: &self.config,
            tokenizer: self.tokenizer.as_deref(),
            mask_id: self.mask_id,
            default_length: None,
        }
    }

    /// A fresh number for response ids.
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A model ready to serve: loaded once, with its tokenizer and chat template.
pub struct Served {
    pub model: LoadedModel,
    pub tokenizer: Option<Tokenizer>,
    pub mask_id: u32,
    pub chat: std::result::Result<ChatTemplate, String>,
    pub generation: GenerationDefaults,
}

impl Served {
    /// Reads what `dir` holds besides the model: tokenizer.json (optional: without one, requests
    /// give token ids), tokenizer_config.json's chat template (optional), the mask id, the
    /// sampling defaults of generation_config.json (optional).
    pub fn new(model: LoadedModel, mask_flag: Option<u32>) -> Result<Self> {
        let dir = model.dir.clone();
        let tokenizer = Tokenizer::from_model_dir(&dir)?;
        let mask_id = mask_id(&model.config, &dir, mask_flag)?;
        let chat = ChatTemplate::load(&dir).map_err(|e| e.to_string());
        let generation = GenerationDefaults::load(&dir)?;
        Ok(Self {
            model,
            tokenizer,
            mask_id,
            chat,
            generation,
        })
    }
}

fn model_name(dir: &Path) -> String {
    dir.file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into())
}

/// A server running on its own threads (the HTTP runtime and the model worker).
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<std::thread::JoinHandle<()>>,
    worker: Option<std::thread::JoinHandle<()>>,
    queue: Arc<Queue>,
}

impl Server {
    /// Binds `addr` (port 0: any free port) and starts serving; returns once it listens.
    pub fn start(served: Served, device: Device, mut limits: Limits, addr: &str) -> Result<Self> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| Error::io(addr, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(addr, e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("socket", e))?;
        let Served {
            model,
            tokenizer,
            mask_id,
            chat,
            generation,
        } = served;
        limits.max_canvas = limits.max_canvas.min(model.config.max_position_embeddings);
        let queue = Arc::new(Queue::new(limits.queue_capacity, limits.max_batch));
        let state = Arc::new(ServerState {
            name: model_name(&model.dir),
            config: model.config.clone(),
            tokenizer: tokenizer.map(Arc::new),
            chat,
            mask_id,
            generation,
            limits,
            queue: queue.clone(),
            created: unix_time(),
            ids: AtomicU64::new(0),
        });
        let worker_queue = queue.clone();
        let worker = std::thread::Builder::new()
            .name("dlm-worker".into())
            .spawn(move || worker_queue.work(model.model.as_ref(), &device))
            .map_err(|e| Error::io("worker thread", e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = routes::router(state);
        let http = std::thread::Builder::new()
            .name("dlm-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        eprintln!("error: cannot hand the socket to the runtime");
                        return;
                    };
                    let served = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = rx.await;
                    });
                    if let Err(e) = served.await {
                        eprintln!("error: the HTTP server stopped: {e}");
                    }
                });
            })
            .map_err(|e| Error::io("http thread", e))?;
        Ok(Self {
            addr,
            shutdown: Some(tx),
            http: Some(http),
            worker: Some(worker),
            queue,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the HTTP server stops (it runs until `stop` or the process ends).
    pub fn wait(mut self) {
        if let Some(h) = self.http.take() {
            let _ = h.join();
        }
    }

    /// Stops accepting, fails waiting jobs, and joins both threads.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.queue.close();
        if let Some(h) = self.http.take() {
            let _ = h.join();
        }
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}
