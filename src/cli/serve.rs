//! `dlm serve MODEL_DIR [--host 127.0.0.1 --port 8080]`: loads the model once and serves the HTTP
//! API and the playground (`serve` module) until interrupted.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::args::{load_model_for_inference, RuntimeArgs};
use crate::serve::{Limits, Served, Server};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HF-layout model directory (config.json, safetensors, tokenizer.json).
    pub model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Mask token id, overriding the model config's `mask_token_id`.
    #[arg(long)]
    pub mask_id: Option<u32>,
    /// Canvases waiting at most; requests beyond it get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Canvases sampled in one batched forward, at most.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Seconds from arrival to answer; the work stops when they run out (504).
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Request bodies over this many bytes get 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Canvas positions at most (prompt + generated + suffix); never more than the model's context.
    #[arg(long, default_value_t = 1024)]
    pub max_canvas: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_steps: usize,
    /// Prompts in one request at most.
    #[arg(long, default_value_t = 16)]
    pub max_prompts: usize,
    /// Generated tokens when a request gives no max_tokens.
    #[arg(long, default_value_t = 16)]
    pub default_max_tokens: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl ServeArgs {
    pub fn limits(&self) -> anyhow::Result<Limits> {
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            anyhow::bail!(
                "--timeout {} must be a positive number of seconds",
                self.timeout
            );
        }
        Ok(Limits {
            max_body_bytes: self.max_body,
            max_canvas: self.max_canvas,
            max_steps: self.max_steps,
            max_prompts: self.max_prompts.max(1),
            default_max_tokens: self.default_max_tokens.max(1),
            queue_capacity: self.queue,
            max_batch: self.max_batch.max(1),
            request_timeout: Duration::from_secs_f64(self.timeout),
        })
    }
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let limits = a.limits()?;
    let m = load_model_for_inference(&a.model, &a.runtime)?;
    let device = a.runtime.device.open()?;
    let served = Served::new(m, a.mask_id)?;
    if served.tokenizer.is_none() {
        eprintln!(
            "warning: {} has no tokenizer.json; requests must give token ids",
            a.model.display()
        );
    }
    let server = Server::start(served, device, limits, &format!("{}:{}", a.host, a.port))?;
    eprintln!(
        "dlm serve: listening on http://{} (playground at /)",
        server.addr()
    );
    server.wait();
    Ok(())
}
