//! The LLaDA and Dream losses against their own PyTorch code (fixtures/README §7.3–7.4) through
//! `dlm score --request` in loss mode, the fixtures' draws fed in: the noised input, the
//! per-position cross-entropy, the loss under each family's convention (LLaDA's pre-training and
//! SFT losses, Dream's shifted one), the negative control of the paper's normaliser, and every
//! gradient, Dream's pad row exactly zero. Tolerance (§7.7): |a − b| ≤ 2e-5 · max|golden entry|.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use common::*;
use serde_json::{json, Value};

fn rows_u32(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::U32).unwrap().to_vec2().unwrap()
}

fn scalar(g: &Value, key: &str) -> f64 {
    g["scalars"][key].as_f64().unwrap()
}

/// §7.7's tolerance for an entry whose largest golden value is `max`.
fn atol(max: f64) -> f64 {
    2e-5 * max
}

/// The fixture's draws as a loss request: `t` is the masking probability, p_mask.
fn request(g: &HashMap<String, Tensor>) -> Value {
    json!({
        "x0": rows_u32(&g["loss_x0"]),
        "t": g["p_mask"].to_vec1::<f32>().unwrap(),
        "mask_draws": g["mask_draws"].to_vec2::<f32>().unwrap(),
    })
}

/// `dlm score FIXTURE --request REQ --full`: the loss, its gradients and the per-position CE.
fn score_loss(name: &str, request: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("req.json");
    std::fs::write(&path, request.to_string()).unwrap();
    let fixture = fixture(name);
    let out = dlm([
        "score",
        fixture.to_str().unwrap(),
        "--request",
        path.to_str().unwrap(),
        "--full",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_loss(what: &str, got: &Value, want: f64) {
    let got = got.as_f64().unwrap();
    let d = (got - want).abs();
    println!("{what}: {got} vs {want} (Δ {d:.1e})");
    assert!(d <= atol(want.abs()), "{what}: {got} vs {want}");
}

/// `v[key]` [B][L] against a golden [B, L] tensor.
fn assert_rows_close(what: &str, v: &Value, want: &Tensor) {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let got = Tensor::new(rows, want.device()).unwrap();
    assert_close(what, &got, want, atol(max_abs(want) as f64) as f32);
}

/// Every gradient the command reports against `grad.*`, and no parameter left out.
fn assert_gradients(name: &str, v: &Value, g: &HashMap<String, Tensor>) {
    let grads = v["grads"].as_object().unwrap();
    assert_eq!(
        grads.len(),
        g.keys().filter(|k| k.starts_with("grad.")).count(),
        "{name}: parameter count"
    );
    for (pname, got) in grads {
        let want = &g[&format!("grad.{pname}")];
        let data: Vec<f32> = serde_json::from_value(got["data"].clone()).unwrap();
        let got = Tensor::new(data, want.device())
            .unwrap()
            .reshape(want.shape())
            .unwrap();
        let tol = atol(max_abs(want) as f64) as f32;
        assert_close(&format!("{name} grad.{pname}"), &got, want, tol);
    }
}

#[test]
fn llada_pretraining_loss_ce_and_gradients_match() {
    let name = "llada-tiny";
    let (g, json) = (golden(name), golden_json(name));
    let v = score_loss(name, &request(&g));
    assert_eq!(v["loss_convention"], "llada");
    assert_eq!(v["shift"], false);
    assert_eq!(v["x_t"], json!(rows_u32(&g["noisy_input_ids"])));
    assert_eq!(
        v["n_masked_targets"].as_f64(),
        Some(scalar(&json, "n_masked"))
    );
    // B·L: each row ÷ its maskable length L (carried in the weights), then ÷ B.
    let l = g["loss_x0"].dim(1).unwrap() as f64;
    let normaliser = v["normaliser"].as_f64().unwrap();
    assert_eq!(normaliser * l, scalar(&json, "loss_normaliser"));
    assert_loss("llada loss", &v["loss_weighted"], scalar(&json, "loss"));
    assert_rows_close("llada ce", &v["ce"], &g["ce"]);
    assert_gradients(name, &v, &g);
}

/// The paper's normaliser on LLaDA's unshifted targets gives the fixture's negative control:
/// the conventions differ only where the fixture says they do.
#[test]
fn llada_under_the_papers_normaliser_gives_the_negative_control() {
    let name = "llada-tiny";
    let (g, json) = (golden(name), golden_json(name));
    let mut req = request(&g);
    req["loss"] = json!("masked-targets");
    req["shift"] = json!(false);
    let v = score_loss(name, &req);
    assert_eq!(v["normaliser"].as_f64(), Some(scalar(&json, "n_masked")));
    let control = scalar(&json, "loss_if_normalised_by_n_masked");
    assert_loss("llada ÷ masked", &v["loss_weighted"], control);
}

/// LLaDA's SFT loss: the prompt restored (row 1 position 1 was drawn below p_mask), each row ÷
/// its answer length, then ÷ B.
#[test]
fn llada_sft_loss_matches() {
    let name = "llada-tiny";
    let (g, json) = (golden(name), golden_json(name));
    let lengths: Vec<i64> = g["sft_prompt_lengths"].to_vec1().unwrap();
    let l = g["loss_x0"].dim(1).unwrap();
    let src: Vec<Vec<u8>> = lengths
        .iter()
        .map(|&p| (0..l).map(|i| u8::from((i as i64) < p)).collect())
        .collect();
    let mut req = request(&g);
    req["src_mask"] = json!(src);
    let v = score_loss(name, &req);
    assert_eq!(v["x_t"], json!(rows_u32(&g["sft_noisy_input_ids"])));
    assert_loss(
        "llada sft_loss",
        &v["loss_weighted"],
        scalar(&json, "sft_loss"),
    );
    assert_rows_close("llada sft_ce", &v["ce"], &g["sft_ce"]);
}

#[test]
fn dream_shifted_loss_ce_and_gradients_match() {
    let name = "dream-tiny";
    let (g, json) = (golden(name), golden_json(name));
    let draws: Vec<Vec<f32>> = g["mask_draws"].to_vec2().unwrap();
    let p_mask: Vec<f32> = g["p_mask"].to_vec1().unwrap();
    assert!(
        draws[1][0] < p_mask[1],
        "the fixture draws row 1's first token below p_mask"
    );
    let v = score_loss(name, &request(&g));
    assert_eq!(v["loss_convention"], "dream");
    assert_eq!(v["shift"], true);
    // Position 0 stays clean although its draw is below p_mask.
    assert_eq!(v["x_t"], json!(rows_u32(&g["noisy_input_ids"])));
    assert_eq!(
        v["n_masked_targets"].as_f64(),
        Some(scalar(&json, "n_masked"))
    );
    assert_eq!(
        v["normaliser"].as_f64(),
        Some(scalar(&json, "loss_normaliser"))
    );
    assert_loss("dream loss", &v["loss_weighted"], scalar(&json, "loss"));
    assert_rows_close("dream ce_shifted", &v["ce"], &g["ce_shifted"]);
    assert_gradients(name, &v, &g);
    // nn.Embedding(padding_idx): the pad row gets exactly no gradient though token 120 is input.
    let embed: Vec<f32> =
        serde_json::from_value(v["grads"]["model.embed_tokens.weight"]["data"].clone()).unwrap();
    let hidden = embed.len() / 128;
    assert!(embed[120 * hidden..121 * hidden].iter().all(|&x| x == 0.0));
    assert!(rows_u32(&g["loss_x0"])[1].contains(&120));
}

/// A family's shift is part of its loss: a request may not turn Dream's off.
#[test]
fn a_request_cannot_unshift_dream() {
    let g = golden("dream-tiny");
    let mut req = request(&g);
    req["shift"] = json!(false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("req.json");
    std::fs::write(&path, req.to_string()).unwrap();
    let fixture = fixture("dream-tiny");
    let e = dlm_fails([
        "score",
        fixture.to_str().unwrap(),
        "--request",
        path.to_str().unwrap(),
    ]);
    assert!(e.contains("shift") && e.contains("dream"), "{e}");
}

/// `--mc-estimator elbo` on LLaDA is its `get_log_likelihood`: with a one-token answer every row
/// hides exactly that token (ratio 1), so each choice's score is the CE of the token at its own
/// position (no shift) with it masked, whatever the draws.
#[test]
fn llada_elbo_of_a_one_token_answer_is_its_masked_cross_entropy() {
    use candle_core::Device;
    use dlm::eval::multiple_choice::{score_question, Choice, Estimator, Question};
    use dlm::model::load_dir;
    use dlm::ops::AttentionMask;
    use dlm::rng::Rng;

    let name = "llada-tiny";
    let g = golden(name);
    let m = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
    let ids = &rows_u32(&g["input_ids"])[0];
    let mask_id = m.config.mask_token_id.unwrap();
    let choice = |answer: u32| Choice {
        context: ids[..6].to_vec(),
        answer: vec![answer],
        chars: 1,
    };
    let q = Question {
        choices: vec![choice(ids[6]), choice(ids[7])],
        label: 0,
    };
    let est = Estimator::LladaElbo {
        mc_num: 32,
        batch: 16,
        cfg: 0.0,
    };
    let mut rng = Rng::seed(0);
    let out = score_question(m.model.as_ref(), &q, est, mask_id, &mut rng, &Device::Cpu).unwrap();
    let mut masked = ids[..7].to_vec();
    masked[6] = mask_id;
    let logits = m
        .model
        .forward(
            &ids_u32(&Tensor::new(vec![masked], &Device::Cpu).unwrap()),
            &AttentionMask::Bidirectional,
        )
        .unwrap();
    let lp = candle_nn::ops::log_softmax(&logits.get(0).unwrap().get(6).unwrap(), 0).unwrap();
    let lp: Vec<f32> = lp.to_vec1().unwrap();
    for (k, answer) in [ids[6], ids[7]].into_iter().enumerate() {
        let want = -lp[answer as usize] as f64;
        let got = out.scores[k];
        assert!((got - want).abs() < 1e-4, "choice {k}: {got} vs {want}");
    }
}
