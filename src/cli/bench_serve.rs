//! `dlm bench serve MODEL_DIR`: a load test of `dlm serve` over loopback. It starts the server
//! in-process on 127.0.0.1 (or targets `--addr`, which must be a loopback address), measures one
//! client sending requests back to back (the baseline), then `--clients` clients at once, bounded
//! by `--requests` and `--seconds`. It prints requests/s, p50/p99 latency, the mean batch size the
//! server reached, the ratio of concurrent to sequential throughput, and whether every response
//! was a well-formed completion; a malformed one is an error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use super::args::{load_model_for_inference, RuntimeArgs};
use crate::serve::client::{get, post_json, HttpResponse};
use crate::serve::{Limits, Served, Server};

#[derive(Debug, Args)]
pub struct ServeBenchArgs {
    /// Model directory to serve in-process (ignored with --addr).
    pub model: Option<PathBuf>,
    /// A running `dlm serve` on a loopback address (e.g. 127.0.0.1:8080) instead.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Concurrent clients in the loaded phase.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Requests in the loaded phase, at most.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Seconds of the loaded phase, at most.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Requests of the one-client baseline.
    #[arg(long, default_value_t = 20)]
    pub baseline_requests: usize,
    /// Every request's prompt. Canvases of one length share forwards, so one prompt (and one
    /// token count) is the batching best case; the seed still varies per request.
    #[arg(long, default_value = "The history of the river")]
    pub prompt: String,
    #[arg(long, default_value_t = 16)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// 0: greedy, so requests of one shape share batches; > 0: each request runs alone.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Mask token id, overriding the model config's `mask_token_id` (in-process server only).
    #[arg(long)]
    pub mask_id: Option<u32>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// What one phase measured.
struct Phase {
    latencies: Vec<f64>,
    malformed: Vec<String>,
    seconds: f64,
    batches: u64,
    canvases: u64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }

    fn percentile(&self, q: f64) -> f64 {
        let mut v = self.latencies.clone();
        v.sort_by(f64::total_cmp);
        let k = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
        v.get(k).copied().unwrap_or(f64::NAN)
    }

    fn print(&self, name: &str) {
        let total = self.latencies.len() + self.malformed.len();
        println!(
            "{name:<12} {:>5} requests in {:>6.2} s: {:>7.1} req/s, p50 {:>7.1} ms, p99 {:>7.1} ms, \
             mean batch {:.2}, well-formed {}/{total}",
            total,
            self.seconds,
            self.rate(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.canvases as f64 / self.batches.max(1) as f64,
            self.latencies.len(),
        );
    }
}

/// Why a response is not a well-formed completion, if it is not.
fn check(r: &HttpResponse, max_tokens: usize) -> Result<(), String> {
    if r.status != 200 {
        return Err(format!("status {}: {}", r.status, r.text()));
    }
    if r.header("content-type") != Some("application/json") {
        return Err(format!("content-type {:?}", r.header("content-type")));
    }
    let v = r.json().ok_or("the body is not JSON")?;
    let c = &v["choices"][0];
    let ok = v["object"] == "text_completion"
        && v["id"].is_string()
        && c["text"].is_string()
        && (c["finish_reason"] == "stop" || c["finish_reason"] == "length")
        && v["usage"]["completion_tokens"]
            .as_u64()
            .is_some_and(|n| n as usize <= max_tokens);
    if !ok {
        return Err(format!("not a completion: {v}"));
    }
    Ok(())
}

fn batch_counts(addr: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let h = get(addr, "/health", Duration::from_secs(10))?
        .json()
        .context("/health did not answer JSON")?;
    let n = |k: &str| h["batches"][k].as_u64().unwrap_or(0);
    Ok((n("count"), n("canvases")))
}

fn phase(
    a: &ServeBenchArgs,
    addr: SocketAddr,
    clients: usize,
    requests: usize,
) -> anyhow::Result<Phase> {
    let (b0, c0) = batch_counts(addr)?;
    let next = AtomicUsize::new(0);
    let limit = Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    let results: Vec<(Vec<f64>, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let (mut lat, mut bad) = (vec![], vec![]);
                    while start.elapsed() < limit {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= requests {
                            break;
                        }
                        let body = json!({
                            "prompt": a.prompt, "max_tokens": a.max_tokens,
                            "steps": a.steps, "temperature": a.temperature, "seed": k,
                        });
                        let sent = Instant::now();
                        let r = post_json(addr, "/v1/completions", &body, limit * 2);
                        let ms = sent.elapsed().as_secs_f64() * 1e3;
                        match r
                            .map_err(|e| e.to_string())
                            .and_then(|r| check(&r, a.max_tokens))
                        {
                            Ok(()) => lat.push(ms),
                            Err(e) => bad.push(e),
                        }
                    }
                    (lat, bad)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let (b1, c1) = batch_counts(addr)?;
    let (mut latencies, mut malformed) = (vec![], vec![]);
    for (l, m) in results {
        latencies.extend(l);
        malformed.extend(m);
    }
    Ok(Phase {
        latencies,
        malformed,
        seconds,
        batches: b1 - b0,
        canvases: c1 - c0,
    })
}

pub fn run(a: ServeBenchArgs) -> anyhow::Result<()> {
    if a.clients == 0 || a.requests == 0 || !a.seconds.is_finite() || a.seconds <= 0.0 {
        bail!("--clients, --requests and --seconds must be positive");
    }
    let server = match (&a.addr, &a.model) {
        (Some(addr), _) => {
            if !addr.ip().is_loopback() {
                bail!("--addr {addr}: the load test only targets loopback addresses");
            }
            None
        }
        (None, Some(dir)) => {
            let m = load_model_for_inference(dir, &a.runtime)?;
            let device = a.runtime.device.open()?;
            let limits = Limits {
                queue_capacity: a.clients.max(64),
                request_timeout: Duration::from_secs_f64(a.seconds * 2.0),
                ..Limits::default()
            };
            Some(Server::start(
                Served::new(m, a.mask_id)?,
                device,
                limits,
                "127.0.0.1:0",
            )?)
        }
        (None, None) => bail!("give a MODEL_DIR to serve, or --addr of a running server"),
    };
    let addr = a
        .addr
        .or(server.as_ref().map(Server::addr))
        .context("no address")?;
    let model = get(addr, "/v1/models", Duration::from_secs(10))?
        .json()
        .unwrap_or(Value::Null);
    println!(
        "dlm bench serve: {} at {addr}, max_tokens {}, steps {}, temperature {}",
        model["data"][0]["id"], a.max_tokens, a.steps, a.temperature
    );
    let baseline = phase(&a, addr, 1, a.baseline_requests)?;
    baseline.print("1 client");
    let loaded = phase(&a, addr, a.clients, a.requests)?;
    loaded.print(&format!("{} clients", a.clients));
    println!(
        "throughput ratio ({} clients / 1 client): {:.2}x",
        a.clients,
        loaded.rate() / baseline.rate()
    );
    let malformed: Vec<&String> = baseline.malformed.iter().chain(&loaded.malformed).collect();
    if let Some(first) = malformed.first() {
        bail!(
            "{} responses were not well-formed; the first: {first}",
            malformed.len()
        );
    }
    println!("every response was a well-formed completion");
    Ok(())
}
