//! `dlm serve` over real HTTP on 127.0.0.1 (an ephemeral port, one server per test): the
//! OpenAI-shaped endpoints, the SSE step stream, batching that does not change answers, the
//! bounded queue (503 + Retry-After), the time limit (504), cancellation when a client leaves, and
//! bad input of every kind answered with a 4xx that says what was wrong, the server still up.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use dlm::model::load_dir;
use dlm::serve::client::{get, post_json, request, request_bytes, send_raw, HttpResponse};
use dlm::serve::{Limits, Served, Server};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

struct Running {
    server: Server,
    _dir: tempfile::TempDir,
}

impl Running {
    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    fn post(&self, path: &str, body: Value) -> HttpResponse {
        post_json(self.addr(), path, &body, T).unwrap()
    }

    fn health(&self) -> Value {
        get(self.addr(), "/health", T).unwrap().json().unwrap()
    }
}

fn start(limits: Limits) -> Running {
    start_with(limits, None)
}

/// A server on the tiny model, with `generation` as its generation_config.json when given.
fn start_with(limits: Limits, generation: Option<Value>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = common::tiny_dlm_dir(dir.path());
    if let Some(g) = generation {
        std::fs::write(model_dir.join("generation_config.json"), g.to_string()).unwrap();
    }
    let model = load_dir(&model_dir, DType::F32, &Device::Cpu).unwrap();
    let served = Served::new(model, None).unwrap();
    let server = Server::start(served, Device::Cpu, limits, "127.0.0.1:0").unwrap();
    Running { server, _dir: dir }
}

fn ok_json(r: &HttpResponse) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json().expect("a JSON body")
}

#[test]
fn endpoints_answer_in_openai_shapes() {
    let s = start(Limits::default());
    let h = ok_json(&get(s.addr(), "/health", T).unwrap());
    assert_eq!(h["status"], "ok");
    let models = ok_json(&get(s.addr(), "/v1/models", T).unwrap());
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny-dlm");
    assert_eq!(models["data"][0]["dlm"]["context"], 256);

    let page = get(s.addr(), "/", T).unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("id=\"canvas\""));

    let req = json!({"model": "tiny-dlm", "prompt": "The history of", "max_tokens": 8, "steps": 4});
    let v = ok_json(&s.post("/v1/completions", req.clone()));
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let c = &v["choices"][0];
    assert!(c["text"].is_string());
    assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    let u = &v["usage"];
    assert!(u["completion_tokens"].as_u64().unwrap() <= 8);
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    // Greedy decoding is reproducible.
    let again = ok_json(&s.post("/v1/completions", req));
    assert_eq!(again["choices"][0]["text"], c["text"]);

    let seeded = json!({"prompt": "A", "max_tokens": 6, "temperature": 0.9, "top_p": 0.9,
                        "sampler": "confidence", "seed": 42});
    let a = ok_json(&s.post("/v1/completions", seeded.clone()));
    let b = ok_json(&s.post("/v1/completions", seeded));
    assert_eq!(
        a["choices"][0]["text"], b["choices"][0]["text"],
        "same seed"
    );

    let many = ok_json(&s.post(
        "/v1/completions",
        json!({"prompt": ["one", "two", "three"], "max_tokens": 4}),
    ));
    let idx: Vec<u64> = many["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2]);
    let ids = ok_json(&s.post(
        "/v1/completions",
        json!({"prompt": [5, 6, 7], "max_tokens": 4, "sampler": "margin", "block_length": 2}),
    ));
    assert!(ids["choices"][0]["text"].is_string());

    let chat = ok_json(&s.post(
        "/v1/chat/completions",
        json!({"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hello"}], "max_tokens": 6}),
    ));
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    assert!(chat["choices"][0]["message"]["content"].is_string());

    let t = ok_json(&s.post(
        "/v1/infill",
        json!({"template": "The <|mask:3|> and the <|mask:2|>.", "steps": 5}),
    ));
    assert_eq!(t["object"], "infill");
    assert_eq!(t["choices"][0]["fills"].as_array().unwrap().len(), 2);
    assert!(t["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("The "));
    assert_eq!(t["usage"]["completion_tokens"], 5);
    let ps = ok_json(&s.post(
        "/v1/infill",
        json!({"prefix": "The river", "suffix": " the sea.", "length": 4, "sampler": "entropy"}),
    ));
    assert_eq!(ps["choices"][0]["fills"].as_array().unwrap().len(), 1);
}

#[test]
fn requests_take_the_models_generation_defaults() {
    let s = start_with(
        Limits::default(),
        Some(
            json!({"sampler": "random-keep", "temperature": 0.9, "top_p": 0.9, "steps": 3,
                    "max_new_tokens": 5}),
        ),
    );
    let bare = ok_json(&s.post("/v1/completions", json!({"prompt": "The", "seed": 7})));
    assert!(
        bare["usage"]["dlm"]["steps"].as_u64().unwrap() <= 3,
        "{bare}"
    );
    assert!(
        bare["usage"]["completion_tokens"].as_u64().unwrap() <= 5,
        "{bare}"
    );
    let spelled = ok_json(&s.post(
        "/v1/completions",
        json!({"prompt": "The", "seed": 7, "sampler": "random-keep", "temperature": 0.9,
               "top_p": 0.9, "steps": 3, "max_tokens": 5}),
    ));
    assert_eq!(bare["choices"][0]["text"], spelled["choices"][0]["text"]);
    // The reference sampler by name: the defaults' top_p is not carried over to it.
    let reference = s.post(
        "/v1/completions",
        json!({"prompt": "The", "sampler": "topk-confidence"}),
    );
    assert_eq!(reference.status, 200, "{}", reference.text());
}

#[test]
fn streaming_sends_each_step_then_the_final_text() {
    let s = start(Limits::default());
    let req = json!({"prompt": "The river", "max_tokens": 8, "steps": 4, "sampler": "confidence"});
    let plain = ok_json(&s.post("/v1/completions", req.clone()));
    let mut streamed = req;
    streamed["stream"] = true.into();
    let r = s.post("/v1/completions", streamed);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = r.events();
    let steps: Vec<Value> = events
        .iter()
        .filter(|(name, _)| name.as_deref() == Some("step"))
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(steps.len(), 4, "one event per step: {events:?}");
    let masked = |e: &Value| {
        e["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t.is_null())
            .count()
    };
    for (k, e) in steps.iter().enumerate() {
        assert_eq!(e["step"], k + 1);
        assert_eq!(e["total_steps"], 4);
        assert_eq!(
            e["tokens"].as_array().unwrap().len(),
            e["fixed"].as_array().unwrap().len()
        );
        assert_eq!(masked(e), 8 - 2 * (k + 1), "two tokens commit per step");
    }
    let (name, last) = &events[events.len() - 2];
    assert!(name.is_none());
    let chunk: Value = serde_json::from_str(last).unwrap();
    assert_eq!(chunk["object"], "text_completion");
    assert_eq!(chunk["choices"][0]["text"], plain["choices"][0]["text"]);
    assert_eq!(events.last().unwrap().1, "[DONE]");

    let chat = s.post(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true}),
    );
    let events = chat.events();
    let chunk: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(chunk["object"], "chat.completion.chunk");
    assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant");
}

#[test]
fn batched_requests_get_the_answers_they_get_alone() {
    let s = start(Limits::default());
    let body = |k: usize| json!({"prompt": format!("Request {k} about"), "max_tokens": 120});
    let alone: Vec<Value> = (0..6)
        .map(|k| ok_json(&s.post("/v1/completions", body(k)))["choices"][0]["text"].clone())
        .collect();
    let addr = s.addr();
    let together: Vec<Value> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..6)
            .map(|k| sc.spawn(move || post_json(addr, "/v1/completions", &body(k), T).unwrap()))
            .collect();
        handles
            .into_iter()
            .map(|h| ok_json(&h.join().unwrap())["choices"][0]["text"].clone())
            .collect()
    });
    assert_eq!(alone, together);
    let b = &s.health()["batches"];
    let (count, canvases) = (
        b["count"].as_u64().unwrap(),
        b["canvases"].as_u64().unwrap(),
    );
    println!("{count} batches for {canvases} canvases");
    assert!(canvases > count, "concurrent requests shared forwards");
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let s = start(Limits {
        queue_capacity: 1,
        max_batch: 1,
        ..Limits::default()
    });
    let addr = s.addr();
    // Sampled (not greedy), so no two share a batch; each takes many forwards.
    let body =
        json!({"prompt": "x", "max_tokens": 200, "temperature": 1.0, "sampler": "confidence"});
    let answers: Vec<HttpResponse> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..8)
            .map(|_| sc.spawn(|| post_json(addr, "/v1/completions", &body, T).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let full: Vec<&HttpResponse> = answers.iter().filter(|r| r.status == 503).collect();
    assert!(!full.is_empty(), "8 requests against a queue of 1");
    for r in &full {
        assert_eq!(r.header("retry-after"), Some("1"));
        let msg = r.json().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.contains("queue is full"), "{msg}");
    }
    assert!(answers.iter().all(|r| r.status == 200 || r.status == 503));
    assert!(s.health()["jobs"]["rejected_requests"].as_u64().unwrap() >= 1);
}

#[test]
fn the_time_limit_stops_work_with_504() {
    let s = start(Limits {
        request_timeout: Duration::from_millis(30),
        ..Limits::default()
    });
    let slow = json!({"prompt": "x", "max_tokens": 240, "steps": 240, "exact": true});
    let r = s.post("/v1/completions", slow);
    assert_eq!(r.status, 504, "{}", r.text());
    let msg = r.json().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("time limit"), "{msg}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.health()["jobs"]["timed_out"] != 1 {
        assert!(Instant::now() < deadline, "{}", s.health());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls /health until `jobs.cancelled` reaches `n`.
fn wait_cancelled(s: &Running, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.health()["jobs"]["cancelled"].as_u64().unwrap() < n {
        assert!(Instant::now() < deadline, "not cancelled: {}", s.health());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_leaves_cancels_its_work() {
    let s = start(Limits::default());
    let slow = |stream: bool| json!({"prompt": "x", "max_tokens": 240, "steps": 240, "exact": true, "stream": stream});
    for (k, stream) in [false, true].into_iter().enumerate() {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        let body = slow(stream).to_string();
        c.write_all(&request_bytes(
            s.addr(),
            "POST",
            "/v1/completions",
            body.as_bytes(),
        ))
        .unwrap();
        if stream {
            // Wait for the first step event, then hang up.
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf).unwrap();
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(c);
        wait_cancelled(&s, k as u64 + 1);
    }
    assert_eq!(s.health()["jobs"]["completed"], 0);
}

#[test]
fn bad_input_is_a_4xx_that_says_what_was_wrong() {
    let s = start(Limits {
        max_body_bytes: 4096,
        max_canvas: 128,
        max_steps: 64,
        ..Limits::default()
    });
    let wrong_method = s.post("/v1/models", json!({}));
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.text());
    let models = get(s.addr(), "/v1/models", T).unwrap().json().unwrap();
    let mask = models["data"][0]["dlm"]["mask_token_id"].as_u64().unwrap();
    let with_mask = format!("{{\"prompt\": [1, {mask}]}}").into_bytes();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/completions",
            b"{\"prompt\": \"a\",".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "/v1/completions",
            b"{\"prompt\": \"a\"} x".to_vec(),
            400,
            "trailing",
        ),
        ("/v1/completions", b"".to_vec(), 400, "empty"),
        ("/v1/completions", b"[1, 2]".to_vec(), 400, "JSON object"),
        (
            "/v1/completions",
            b"{\"prompt\": \"\xff\xfe\"}".to_vec(),
            400,
            "UTF-8",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": "ten"}"#.to_vec(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": -3}"#.to_vec(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": 1e300}"#.to_vec(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": 123456789012345678901234567890}"#.to_vec(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": 100000000}"#.to_vec(),
            400,
            "limit of 128",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": 0}"#.to_vec(),
            400,
            "at least 1",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "steps": 100000}"#.to_vec(),
            400,
            "steps",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "steps": 0}"#.to_vec(),
            400,
            "steps",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "seed": 1e400}"#.to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "temperature": -1}"#.to_vec(),
            400,
            "temperature",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "top_p": 2}"#.to_vec(),
            400,
            "top_p",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "threshold": 0.5}"#.to_vec(),
            400,
            "ranking sampler",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "sampler": "best"}"#.to_vec(),
            400,
            "unknown variant",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "stream": "yes"}"#.to_vec(),
            400,
            "stream",
        ),
        (
            "/v1/completions",
            br#"{"prompt": ""}"#.to_vec(),
            400,
            "empty",
        ),
        (
            "/v1/completions",
            br#"{"prompt": []}"#.to_vec(),
            400,
            "empty array",
        ),
        (
            "/v1/completions",
            br#"{"prompt": {"a": 1}}"#.to_vec(),
            400,
            "prompt",
        ),
        (
            "/v1/completions",
            br#"{"max_tokens": 4}"#.to_vec(),
            400,
            "required",
        ),
        (
            "/v1/completions",
            br#"{"prompt": [999999]}"#.to_vec(),
            400,
            "vocabulary",
        ),
        ("/v1/completions", with_mask, 400, "mask token"),
        (
            "/v1/completions",
            br#"{"prompt": "a", "n": 3}"#.to_vec(),
            400,
            "n = 3",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "template": "<|mask:2|>"}"#.to_vec(),
            400,
            "template",
        ),
        (
            "/v1/chat/completions",
            br#"{"messages": []}"#.to_vec(),
            400,
            "no messages",
        ),
        (
            "/v1/chat/completions",
            br#"{"messages": [{"role": "robot", "content": "x"}]}"#.to_vec(),
            400,
            "robot",
        ),
        (
            "/v1/chat/completions",
            br#"{"messages": [{"role": "user"}]}"#.to_vec(),
            400,
            "content",
        ),
        ("/v1/infill", br#"{"prefix": "a"}"#.to_vec(), 400, "length"),
        ("/v1/infill", br#"{}"#.to_vec(), 400, "template"),
        (
            "/v1/infill",
            br#"{"template": "no holes"}"#.to_vec(),
            400,
            "no `<|mask:N|>`",
        ),
        (
            "/v1/infill",
            br#"{"template": "a <|mask:0|>"}"#.to_vec(),
            400,
            "at least one token",
        ),
        (
            "/v1/infill",
            br#"{"template": "a <|mask:99999999999999999999|>"}"#.to_vec(),
            400,
            "whole number",
        ),
        (
            "/v1/infill",
            br#"{"template": "a <|mask:99999999999|>"}"#.to_vec(),
            400,
            "limit of 128",
        ),
        (
            "/v1/infill",
            br#"{"template": "<|mask:9999999999999999999|><|mask:9999999999999999999|>"}"#.to_vec(),
            400,
            "limit of 128",
        ),
        (
            "/v1/completions",
            vec![b'x'; 10_000],
            413,
            "limit of 4096 bytes",
        ),
        ("/v1/nothing", b"{}".to_vec(), 404, "no such route"),
    ];
    for (path, body, status, needle) in cases {
        let r = request(s.addr(), "POST", path, &body, T).unwrap();
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(80)
            .collect::<String>();
        assert_eq!(r.status, status, "{path} {shown}: {}", r.text());
        let v = r
            .json()
            .unwrap_or_else(|| panic!("{shown}: a JSON error body, got {}", r.text()));
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{shown}: `{msg}` should mention `{needle}`"
        );
        assert!(v["error"]["type"].is_string());
    }
    // Refused settings are named as the request's fields, not as the command line's flags.
    for (body, want) in [
        (
            json!({"prompt": "a", "steps": 0}),
            "`steps` must be at least 1",
        ),
        (
            json!({"prompt": "a", "sampler": "confidence", "block_length": 0}),
            "`block_length` must be at least 1",
        ),
        (
            json!({"prompt": "a", "exact": true, "cache": "dual"}),
            "`exact` runs the reference's full work; it excludes `cache`",
        ),
    ] {
        let r = s.post("/v1/completions", body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let v = r.json().unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want) && !msg.contains("--"), "{body}: {msg}");
    }
    // Not even HTTP: the connection is answered or closed, never the server.
    let _ = send_raw(s.addr(), b"\x00\x01garbage\r\n\r\n", T);
    let ok = s.post(
        "/v1/completions",
        json!({"prompt": "still", "max_tokens": 4}),
    );
    assert_eq!(ok.status, 200, "the server still answers: {}", ok.text());
    assert_eq!(s.health()["jobs"]["failed"], 0);
}
