//! The playground in a real browser: headless Chromium, driven by `scripts/playground-check.mjs`
//! over the DevTools protocol, loads the page from a server started here, submits a prompt,
//! watches the canvas denoise step by step, and waits for the final text, which must be the
//! text the API returns for the same request. The screenshot is kept as `target/playground.png`.
//!
//! Chromium and Node come from Debian (`.ci/run` installs Chromium). Without them this test
//! prints why and passes, unless `DLM_REQUIRE_BROWSER` is set, as CI sets it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use candle_core::{DType, Device};
use dlm::model::load_dir;
use dlm::serve::client::post_json;
use dlm::serve::{Limits, Served, Server};
use serde_json::{json, Value};

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The cargo target directory: the test binary lives in `target/<profile>/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

#[test]
fn the_playground_denoises_a_prompt_in_chromium() {
    let chromium = std::env::var("DLM_CHROMIUM")
        .ok()
        .map(PathBuf::from)
        .or_else(|| find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]));
    let node = find(&["/usr/bin/node", "/usr/local/bin/node"]);
    let (Some(chromium), Some(node)) = (chromium, node) else {
        let msg = "skipped: the browser test needs /usr/bin/chromium and node \
                   (apt-get install chromium nodejs)";
        assert!(std::env::var_os("DLM_REQUIRE_BROWSER").is_none(), "{msg}");
        println!("{msg}");
        return;
    };

    let dir = tempfile::tempdir().unwrap();
    let model = load_dir(&common::tiny_dlm_dir(dir.path()), DType::F32, &Device::Cpu).unwrap();
    let server = Server::start(
        Served::new(model, None).unwrap(),
        Device::Cpu,
        Limits::default(),
        "127.0.0.1:0",
    )
    .unwrap();
    let request = json!({"prompt": "The history of the river", "max_tokens": 48, "steps": 16,
                         "sampler": "confidence"});
    let request_path = dir.path().join("request.json");
    std::fs::write(&request_path, request.to_string()).unwrap();
    let screenshot = target_dir().join("playground.png");
    let _ = std::fs::remove_file(&screenshot);

    let out = Command::new(node)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/playground-check.mjs"
        ))
        .arg(format!("http://{}/", server.addr()))
        .arg(&screenshot)
        .arg(&request_path)
        .arg(&chromium)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "playground-check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{seen:#}");

    // The page showed the canvas part-masked on the way: a status per step, fewer masks each time.
    let statuses = seen["statuses"].as_array().unwrap();
    let masked = seen["masked_counts"].as_array().unwrap();
    let steps: Vec<u64> = statuses
        .iter()
        .zip(masked)
        .filter(|(s, _)| s.as_str().is_some_and(|s| s.starts_with("step ")))
        .filter_map(|(_, m)| m.as_u64())
        .collect();
    assert!(steps.len() >= 2, "step statuses seen: {statuses:?}");
    assert!(
        steps.iter().any(|&m| m > 0),
        "a part-masked canvas was shown"
    );
    assert!(
        steps.windows(2).all(|w| w[0] >= w[1]),
        "masks only go: {steps:?}"
    );
    assert!(seen["status"].as_str().unwrap().starts_with("done"));
    assert!(!seen["canvas"].as_str().unwrap().contains('░'));

    // The final text on the page is the API's answer to the same request.
    let api = post_json(
        server.addr(),
        "/v1/completions",
        &request,
        Duration::from_secs(60),
    )
    .unwrap()
    .json()
    .unwrap();
    assert_eq!(seen["final"], api["choices"][0]["text"]);
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    println!("screenshot: {}", screenshot.display());
}
