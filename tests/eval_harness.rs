//! The evaluation harness on the tiny fixture models: batched scoring equals one-at-a-time
//! scoring and the fixtures' causal logits; every task runs end to end on synthetic records,
//! counts malformed ones, and is deterministic given the seed; the CLI refuses bad input.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device};
use common::*;
use dlm::data::tokenizer::Tokenizer;
use dlm::eval::generation::{score, GenSettings, Gold};
use dlm::eval::harness::{run_task, EvalModel, EvalSettings};
use dlm::eval::multiple_choice::{score_question, Choice, Estimator, PromptFormat, Question};
use dlm::eval::score::{mc_draws, mc_score_with_draws, target_logprobs, Attention, ScoreRow};
use dlm::eval::tasks::find_task;
use dlm::model::load_dir;
use dlm::rng::Rng;
use dlm::sample::filter::log_softmax;
use serde_json::json;

const MASK_ID: u32 = 7;

/// A word-level tokenizer over the tiny models' 96 ids; unknown words map to id 1.
fn word_tokenizer() -> Tokenizer {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let words = "the a cat dog sat on mat is was big small red blue it he she and to of \
                 question answer goal water boil fire cold hot story day went home def return \
                 x y add b if for in print true false ( ) : , . ? ! 1 2 3 4 5 6 7 8 9 0 + - = \
                 hellaswag piqa winogrande siqa because table cup fell slippery walked ran";
    let mut vocab: HashMap<String, u32> = HashMap::new();
    vocab.insert("<pad>".into(), 0);
    vocab.insert("<unk>".into(), 1);
    for w in words.split_whitespace() {
        let id = vocab.len() as u32;
        // 7 is the fixtures' mask id: keep it out of the text.
        let id = if id >= MASK_ID { id + 1 } else { id };
        vocab.entry(w.to_string()).or_insert(id);
    }
    assert!(vocab.values().all(|&id| id < 96));
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let mut t = tokenizers::Tokenizer::new(model);
    t.with_pre_tokenizer(Some(Whitespace {}));
    Tokenizer::from(t)
}

#[test]
fn ar_logprobs_match_the_causal_fixture_logits_under_padding() {
    for name in TINY {
        let g = golden(name);
        let m = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let ids: Vec<Vec<u32>> = ids_u32(&g["input_ids"]).to_vec2().unwrap();
        let logits: Vec<Vec<Vec<f32>>> = g["logits_causal"].to_vec3().unwrap();
        // Row 1 is cut short, so the batch pads it: causal attention must make that harmless.
        let rows = vec![
            ScoreRow::autoregressive(ids[0].clone(), 3),
            ScoreRow::autoregressive(ids[1][..10].to_vec(), 1),
        ];
        let got = target_logprobs(
            m.model.as_ref(),
            &rows,
            Attention::Autoregressive,
            &Device::Cpu,
        )
        .unwrap();
        let mut worst = 0f32;
        for (b, row) in rows.iter().enumerate() {
            for (k, &(pos, target)) in row.targets.iter().enumerate() {
                let want = log_softmax(&logits[b][pos])[target as usize];
                worst = worst.max((got[b][k] - want).abs());
            }
        }
        println!("{name}: AR log-prob max |Δ| = {worst:.2e} (atol 1e-4)");
        assert!(worst < 1e-4, "{name}: {worst}");
    }
}

#[test]
fn batched_choices_score_as_one_at_a_time() {
    let m = load_dir(&fixture("llama-tiny"), DType::F32, &Device::Cpu).unwrap();
    let model = m.model.as_ref();
    let q = Question {
        choices: vec![
            Choice {
                context: vec![3, 4, 5, 6],
                answer: vec![10, 11, 12],
                chars: 9,
            },
            Choice {
                context: vec![3, 4, 5, 6],
                answer: vec![20, 21, 22, 23, 24],
                chars: 12,
            },
            Choice {
                context: vec![3, 4, 5, 6],
                answer: vec![30, 31, 32],
                chars: 3,
            },
        ],
        label: 2,
    };
    let score = |estimator, mask_id, seed| {
        score_question(
            model,
            &q,
            estimator,
            mask_id,
            &mut Rng::seed(seed),
            &Device::Cpu,
        )
        .unwrap()
    };
    let steps = 6;
    let o = score(Estimator::Reference { steps }, MASK_ID, 5);
    // The same draws, consumed in the same order, one choice at a time.
    let mut rng = Rng::seed(5);
    for (c, got) in q.choices.iter().zip(&o.scores) {
        let ids = [c.context.clone(), c.answer.clone()].concat();
        let src: Vec<bool> = (0..ids.len()).map(|i| i < c.context.len()).collect();
        let draws = mc_draws(steps, ids.len(), &mut rng);
        let (_, want) =
            mc_score_with_draws(model, &ids, &src, MASK_ID, &draws, &Device::Cpu).unwrap();
        assert!((*got as f32 - want).abs() < 1e-5, "{got} vs {want}");
    }
    // acc_norm divides the total (score × tokens) by characters.
    let want_norm = o.scores[1] * 5.0 / 12.0;
    assert!((o.norm_scores[1] - want_norm).abs() < 1e-9);

    // AR: sum and mean reductions of the same causal log-probabilities.
    let sum = score(Estimator::Ar { mean: false }, 0, 0);
    let mean = score(Estimator::Ar { mean: true }, 0, 0);
    for (k, c) in q.choices.iter().enumerate() {
        let n = c.answer.len() as f64;
        assert!((sum.scores[k] / n - mean.scores[k]).abs() < 1e-6);
        assert!((sum.scores[k] / c.chars as f64 - sum.norm_scores[k]).abs() < 1e-9);
    }
    // ELBO: a positive NLL bound per choice, reproducible from the seed.
    let e1 = score(Estimator::Elbo { samples: 8 }, MASK_ID, 1);
    let e2 = score(Estimator::Elbo { samples: 8 }, MASK_ID, 1);
    assert_eq!(e1, e2);
    assert!(e1.scores.iter().all(|s| s.is_finite() && *s >= 0.0));
}

fn settings(ar: bool, estimator: Estimator) -> EvalSettings {
    EvalSettings {
        ar,
        estimator,
        format: PromptFormat::Reference,
        gen: GenSettings {
            steps: Some(4),
            temperature: None,
            sft: None,
            max_len: 64,
        },
        limit: None,
        seed: 3,
        show_progress: false,
    }
}

#[test]
fn every_task_runs_end_to_end_and_counts_malformed_records() {
    let m = load_dir(&fixture("gpt2-tiny"), DType::F32, &Device::Cpu).unwrap();
    let tok = word_tokenizer();
    let em = EvalModel {
        model: m.model.as_ref(),
        tokenizer: &tok,
        mask_id: Some(MASK_ID),
        stop_ids: vec![0],
        device: &Device::Cpu,
    };
    let piqa = vec![
        json!({"goal": "boil water", "sol1": "use fire", "sol2": "use cold", "label": 0}),
        json!({"goal": "the cat", "sol1": "sat on mat", "sol2": "is big", "label": 1}),
        json!({"goal": "no solutions", "label": 0}),
    ];
    let lambada = vec![
        json!({"text": "the cat sat on the mat"}),
        json!({"text": "he went home"}),
        json!({"text": ""}),
    ];
    let rocstories = vec![json!({
        "InputSentence1": "the cat sat", "InputSentence2": "it was big",
        "InputSentence3": "the dog ran", "InputSentence4": "she walked home",
        "RandomFifthSentenceQuiz1": "it was hot", "RandomFifthSentenceQuiz2": "no",
        "AnswerRightEnding": "1"})];
    let code = vec![json!({
        "prompt": "def add ( x , y ) :", "suffix": "", "canonical_solution": "return x + y",
        "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"})];
    let infill = vec![
        json!({"prefix": "the cat", "middle": " sat on", "suffix": " the mat"}),
        json!({"prefix": "he", "middle": " went", "suffix": ""}),
        json!({"prefix": "no middle"}),
    ];
    let ar = || settings(true, Estimator::Ar { mean: true });
    let reference = || settings(false, Estimator::Reference { steps: 4 });
    let elbo = settings(false, Estimator::Elbo { samples: 4 });
    // (task, records, settings, scored, skipped as malformed)
    let cases = [
        ("piqa", &piqa, ar(), 2, 1),
        ("piqa", &piqa, reference(), 2, 1),
        ("piqa", &piqa, elbo, 2, 1),
        ("lambada", &lambada, reference(), 2, 1),
        ("lambada", &lambada, ar(), 2, 1),
        ("rocstories", &rocstories, reference(), 1, 0),
        ("code-infill", &code, ar(), 1, 0),
        ("infill", &infill, reference(), 2, 1),
        ("infill", &infill, ar(), 2, 1),
    ];
    for (task, records, s, n, skipped) in cases {
        let spec = find_task(task).unwrap();
        let run = || run_task(&em, &spec, records, &s, ("gpt2-tiny", "synthetic")).unwrap();
        let r = run();
        assert_eq!((r.n, r.skipped), (n, skipped), "{task}");
        let metric = r.metrics.values().next().unwrap();
        assert!((0.0..=100.0).contains(&metric.mean), "{task}: {metric:?}");
        // Same seed, same results.
        let again = run();
        // (compared as JSON: a one-example stderr is NaN, written as null)
        let json = |m| serde_json::to_string(m).unwrap();
        assert_eq!(
            json(&r.metrics),
            json(&again.metrics),
            "{task} is not deterministic"
        );
    }
    // The code task's random model output fails the tests; its metric is pass@1 = 0.
    let spec = find_task("code-infill").unwrap();
    let r = run_task(&em, &spec, &code, &ar(), ("m", "d")).unwrap();
    assert_eq!(r.metrics["pass@1"].mean, 0.0);
    // DLM mode needs a mask id.
    let no_mask = EvalModel {
        mask_id: None,
        ..em
    };
    let e = run_task(
        &no_mask,
        &find_task("piqa").unwrap(),
        &piqa,
        &settings(false, Estimator::Reference { steps: 2 }),
        ("m", "d"),
    )
    .unwrap_err();
    // The library names its settings; the command line writes them as its flags.
    assert!(e.to_string().contains("set ar to evaluate"), "{e}");
    let cli = dlm::cli::describe_error(&e.into());
    assert!(cli.contains("--ar") && cli.contains("--mask-id"), "{cli}");
}

#[test]
fn a_span_scores_exact_match_and_its_tokens_restored_in_place() {
    let tok = word_tokenizer();
    let gold_ids = tok.encode("sat on the").unwrap();
    let gold = Gold::Span(" sat on the".into(), gold_ids.clone());
    let metrics = |text: &str| {
        let ids = tok.encode(text).unwrap();
        let m: HashMap<_, _> = score(&gold, &ids, &tok, &[]).into_iter().collect();
        (m["acc"], m["token_acc"])
    };
    assert_eq!(metrics("sat on the"), (1.0, 1.0));
    // Two of three in place; a right token at the wrong position does not count.
    assert_eq!(metrics("sat on a"), (0.0, 2.0 / 3.0));
    assert_eq!(metrics("on the sat"), (0.0, 0.0));
    // A shorter answer (an AR model that stopped) scores its missing tokens as wrong.
    assert_eq!(metrics("sat"), (0.0, 1.0 / 3.0));
}

/// Runs dlm expecting a failure whose message contains `needle`.
fn refused(args: &[&str], needle: &str) {
    let (rc, _, err) = dlm_run(args);
    assert_ne!(rc, 0, "{args:?} succeeded");
    assert!(err.contains(needle), "{err}");
}

#[test]
fn cli_refuses_unknown_tasks_and_missing_data() {
    let model = fixture("gpt2-tiny");
    let model = model.to_str().unwrap();
    let (rc, _, err) = dlm_run(["eval", model, "--task", "piqa,hellaswg"]);
    assert_ne!(rc, 0);
    assert!(
        err.contains("unknown task `hellaswg`") && err.contains("winogrande"),
        "{err}"
    );
    let lambada = ["eval", model, "--task", "lambada"];
    refused(
        &["eval", model, "--task", "piqa", "--assets", "/nonexistent"],
        "fetch-assets.sh benchmarks",
    );
    refused(
        &[&lambada[..], &["--data-dir", "/nonexistent"]].concat(),
        "--data-dir",
    );
}

#[test]
fn cli_data_replaces_one_tasks_file() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/dlm-shakespeare-12m");
    let dir = tempfile::tempdir().unwrap();
    let passages = dir.path().join("heldout.txt");
    std::fs::write(
        &passages,
        "To be or not to be, that is the question\nThe king is dead, long live the king\n",
    )
    .unwrap();
    let out = dir.path().join("r.json");
    let (p, o) = (passages.to_str().unwrap(), out.to_str().unwrap());
    let (rc, _, err) = dlm_run([
        "eval",
        model,
        "--task",
        "lambada",
        "--data",
        p,
        "--ar",
        "--out",
        o,
        "--no-progress",
    ]);
    assert_eq!(rc, 0, "{err}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let r = &results["results"][0];
    assert_eq!(r["n"], 2, "{results}");
    assert_eq!(r["data"].as_str().unwrap(), p);

    refused(
        &["eval", model, "--task", "lambada,piqa", "--data", p],
        "exactly one --task",
    );
    refused(
        &[
            "eval",
            model,
            "--task",
            "lambada",
            "--data",
            "/nonexistent.txt",
        ],
        "no such file",
    );
}

#[test]
fn diffusion_scorers_use_the_model_familys_alignment() {
    use dlm::diffusion::shift::Shift;
    use dlm::eval::score::{mc_reduce, mc_rows};
    // LLaDA is trained without the shift: logits at i score token i.
    let m = load_dir(&fixture("llada-tiny"), DType::F32, &Device::Cpu).unwrap();
    let model = m.model.as_ref();
    let mask = m.config.mask_token_id.unwrap();
    let ids: Vec<u32> = vec![3, 4, 5, 6, 30, 31, 32];
    let src: Vec<bool> = (0..ids.len()).map(|i| i < 4).collect();
    let draws = mc_draws(4, ids.len(), &mut Rng::seed(2));
    let (_, got) = mc_score_with_draws(model, &ids, &src, mask, &draws, &Device::Cpu).unwrap();
    let by = |shift| {
        let rows = mc_rows(&ids, &src, mask, &draws, shift);
        let lp = target_logprobs(model, &rows, Attention::Diffusion, &Device::Cpu).unwrap();
        mc_reduce(&lp).1
    };
    let (same, next) = (by(Shift::Same), by(Shift::Next));
    assert!((got - same).abs() < 1e-6, "{got} vs no-shift {same}");
    assert!(
        (got - next).abs() > 1e-3,
        "the shifted score {next} should differ"
    );
}

/// LLaDA's likelihood under classifier-free guidance (`get_log_likelihood`'s `cfg`): each target
/// is scored by log_softmax(un + (cfg + 1)·(cond − un)), `un` the logits with the prompt masked,
/// checked against the two forwards done by hand on llada-tiny (within 1e-5); cfg 0 is the plain
/// score exactly, and `dlm eval --cfg-scale` on another estimator is refused.
#[test]
fn llada_likelihood_with_classifier_free_guidance() {
    use dlm::eval::score::llada_elbo_rows;
    let m = load_dir(&fixture("llada-tiny"), DType::F32, &Device::Cpu).unwrap();
    let model = m.model.as_ref();
    let mask = m.config.mask_token_id.unwrap();
    let ids: Vec<u32> = vec![3, 4, 5, 6, 30, 31, 32, 33];
    let dev = Device::Cpu;
    let rows_with = |cfg| llada_elbo_rows(&ids, 4, mask, 4, 4, cfg, &mut Rng::seed(9));
    let plain: Vec<ScoreRow> = rows_with(0.0).into_iter().map(|(_, r)| r).collect();
    let guided: Vec<ScoreRow> = rows_with(1.5).into_iter().map(|(_, r)| r).collect();
    assert!(plain.iter().all(|r| r.guidance.is_none()));
    let lp_plain = target_logprobs(model, &plain, Attention::Diffusion, &dev).unwrap();
    let lp_guided = target_logprobs(model, &guided, Attention::Diffusion, &dev).unwrap();
    let logits = |x: &[u32]| -> Vec<Vec<f32>> {
        let t = candle_core::Tensor::new(x, &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let y = model
            .forward(&t, &dlm::ops::AttentionMask::Bidirectional)
            .unwrap();
        y.squeeze(0).unwrap().to_vec2().unwrap()
    };
    let log_softmax_at = |row: &[f32], k: usize| -> f32 {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
        row[k] - lse
    };
    for ((p, g), (lp, lg)) in plain
        .iter()
        .zip(&guided)
        .zip(lp_plain.iter().zip(&lp_guided))
    {
        assert_eq!(p.ids, g.ids, "same draws, same masks");
        let un_ids = &g.guidance.as_ref().unwrap().unconditional;
        assert!(un_ids[..4].iter().all(|&t| t == mask) && un_ids[4..] == g.ids[4..]);
        let (cond, un) = (logits(&g.ids), logits(un_ids));
        for (k, &(row, target)) in g.targets.iter().enumerate() {
            let mixed: Vec<f32> = (cond[row].iter().zip(&un[row]))
                .map(|(c, u)| u + 2.5 * (c - u))
                .collect();
            let want = log_softmax_at(&mixed, target as usize);
            assert!((lg[k] - want).abs() < 1e-5, "{} vs {want}", lg[k]);
            let plain_want = log_softmax_at(&cond[row], target as usize);
            assert!((lp[k] - plain_want).abs() < 1e-5);
        }
    }
    assert_ne!(lp_plain, lp_guided, "guidance changes the scores");
    let dir = tempfile::tempdir().unwrap();
    let passages = dir.path().join("p.txt");
    std::fs::write(&passages, "To be or not to be, that is the question\n").unwrap();
    let p = passages.to_str().unwrap();
    let llada = fixture("llada-tiny");
    let gpt2 = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/weights/dlm-shakespeare-12m"
    ));
    for (model, cfg, needle) in [
        (&llada, "--cfg-scale=-1", "--cfg-scale must be"),
        (
            &gpt2,
            "--cfg-scale=1",
            "guides LLaDA's likelihood estimator only",
        ),
    ] {
        let m = model.to_str().unwrap();
        let args = ["eval", m, "--task", "lambada", "--data", p, cfg];
        refused(&args, needle);
    }
}
