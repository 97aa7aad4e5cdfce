//! Diffusion sampling beyond the fixtures: every rule finishes its canvases, blocks go left to
//! right, threshold decoding saves forwards, seeds reproduce, and bad input (too long, the mask
//! token in a prompt, zero steps, empty spans, malformed JSONL, no mask token) is an error with a
//! message, never a panic, in the library and through the binary.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{dlm_run, fixture};
use dlm::model::{load_dir, LoadedModel};
use dlm::rng::Rng;
use dlm::sample::canvas::Canvas;
use dlm::sample::denoise::{Denoiser, SampleReport};
use dlm::sample::events::StepEvent;
use dlm::sample::filter::TokenChoice;
use dlm::sample::head_rows::HeadRows;
use dlm::sample::kv_reuse::{CacheMode, StepCache};
use dlm::sample::options::{DiffusionOptions, Sampler};
use dlm::sample::unmask::Rule;

const MASK: u32 = 7;

fn model(name: &str) -> LoadedModel {
    load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap()
}

fn run(
    m: &LoadedModel,
    canvases: &mut [Canvas],
    opts: &DiffusionOptions,
    seed: u64,
    mut on: impl FnMut(&StepEvent),
) -> dlm::Result<SampleReport> {
    denoiser(m, opts).sample(canvases, &mut Rng::seed(seed), &mut on)
}

fn denoiser<'a>(m: &'a LoadedModel, opts: &'a DiffusionOptions) -> Denoiser<'a> {
    Denoiser {
        model: m.model.as_ref(),
        device: &Device::Cpu,
        opts,
    }
}

fn ranked(rule: Rule, steps: usize) -> DiffusionOptions {
    DiffusionOptions {
        sampler: Sampler::Ranked(rule),
        head_rows: HeadRows::Needed,
        ..DiffusionOptions::reference(steps)
    }
}

#[test]
fn every_sampler_fills_the_canvas_and_seeds_reproduce() {
    let m = model("gpt2-tiny");
    let sampling = TokenChoice::Sample {
        temperature: 0.9,
        top_k: Some(20),
        top_p: Some(0.9),
    };
    let samplers = [
        Sampler::RandomKeep,
        Sampler::Ranked(Rule::Confidence),
        Sampler::Ranked(Rule::Margin),
        Sampler::Ranked(Rule::Entropy),
        Sampler::Ranked(Rule::Random),
    ];
    for sampler in samplers {
        for head_rows in [HeadRows::All, HeadRows::Needed] {
            let opts = DiffusionOptions {
                sampler,
                choice: sampling,
                head_rows,
                ..DiffusionOptions::reference(5)
            };
            let fresh = || vec![Canvas::infill(&[1, 2], 10, &[3], MASK).unwrap(); 2];
            let mut a = fresh();
            let mut b = fresh();
            run(&m, &mut a, &opts, 11, |_| {}).unwrap();
            run(&m, &mut b, &opts, 11, |_| {}).unwrap();
            assert_eq!(a, b, "{sampler:?} {head_rows:?}: same seed, same canvases");
            for c in &a {
                assert!(c.masked.iter().all(|&x| !x), "{sampler:?}: all committed");
                assert_eq!((&c.ids[..2], c.ids[12]), (&[1, 2][..], 3), "fixed kept");
            }
        }
    }
}

#[test]
fn blocks_commit_left_to_right_and_threshold_saves_forwards() {
    let m = model("llama-tiny");
    let mut c = [Canvas::prefix(&[1], 12, MASK).unwrap()];
    let opts = DiffusionOptions {
        block_length: Some(4),
        ..ranked(Rule::Confidence, 6)
    };
    let mut last_block = 0;
    run(&m, &mut c, &opts, 0, |e| {
        // Positions 1..=12 in blocks [1,4], [5,8], [9,12]: a block starts only when the one
        // before it is complete.
        let first_masked = e.masked.iter().position(|&x| x).unwrap_or(13);
        let block = (first_masked - 1) / 4;
        assert!(block >= last_block);
        assert!(e.masked[(block * 4 + 5).min(13)..].iter().all(|&x| x));
        last_block = block;
        assert!(e.committed >= 1);
    })
    .unwrap();
    assert!(c[0].masked.iter().all(|&x| !x));

    // A threshold of 0 commits every position whose token has any probability: one forward.
    let mut c = [Canvas::prefix(&[1], 12, MASK).unwrap()];
    let opts = DiffusionOptions {
        threshold: Some(0.0),
        ..ranked(Rule::Confidence, 12)
    };
    let report = run(&m, &mut c, &opts, 0, |_| {}).unwrap();
    assert_eq!(report.forwards, 1);
}

#[test]
fn a_fresh_cache_gives_the_full_forward_hidden_states_on_its_window() {
    // Reusing the cache on an unchanged canvas must equal the full bidirectional forward on the
    // window rows (positions, RoPE offsets and GPT-2's learned positions all line up), for a
    // window that runs to the end (prefix) and one in the middle (dual).
    for name in ["gpt2-tiny", "llama-tiny", "llama-tiny-tied"] {
        let m = model(name);
        let ids = Tensor::new(
            &[[1u32, 5, 9, 2, 7, 7, 7, 3], [4, 4, 8, 1, 7, 2, 7, 6]],
            &Device::Cpu,
        )
        .unwrap();
        for window in [(4, 8), (2, 5)] {
            let mut slot = None;
            let forward = |slot: &mut Option<StepCache>, batch: &[usize]| {
                StepCache::forward(slot, m.model.as_ref(), &ids, batch, window).unwrap()
            };
            let (full, offset) = forward(&mut slot, &[0, 1]);
            assert_eq!(
                offset, 0,
                "{name}: the first call refreshes with a full forward"
            );
            assert_eq!(full.dim(1).unwrap(), 8);
            let (cached, offset) = forward(&mut slot, &[0, 1]);
            assert_eq!(offset, window.0, "{name}: the window starts where asked");
            let want = full.narrow(1, window.0, window.1 - window.0).unwrap();
            let diff = (cached - want).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(
                diff < 1e-5,
                "{name} {window:?}: cached window differs by {diff}"
            );
            // Another batch refreshes.
            assert_eq!(forward(&mut slot, &[1, 0]).1, 0);
        }
    }
}

#[test]
fn cached_blocks_fill_every_canvas_and_start_exactly() {
    let m = model("llama-tiny");
    let opts = DiffusionOptions {
        block_length: Some(4),
        ..ranked(Rule::Confidence, 6)
    };
    let fresh = || vec![Canvas::prefix(&[1, 2, 3], 12, MASK).unwrap(); 2];
    let first_proposal = |o: &DiffusionOptions| {
        let mut c = fresh();
        let mut first = None;
        let report = run(&m, &mut c, o, 0, |e| {
            first.get_or_insert_with(|| e.proposal.to_vec());
        })
        .unwrap();
        assert!(c.iter().all(|c| c.masked.iter().all(|&x| !x)));
        assert_eq!(&c[1].ids[..3], &[1, 2, 3]);
        (first.unwrap(), report)
    };
    let (exact_first, exact_report) = first_proposal(&opts);
    for cache in [CacheMode::Prefix, CacheMode::Dual] {
        let cached = DiffusionOptions {
            cache,
            ..opts.clone()
        };
        let (cached_first, cached_report) = first_proposal(&cached);
        // The first forward of a block is a full, exact one.
        assert_eq!(exact_first, cached_first, "{cache:?}");
        assert_eq!(exact_report.forwards, cached_report.forwards, "{cache:?}");
    }
    // The reference's full work and a cache exclude each other.
    let exact_cached = DiffusionOptions {
        cache: CacheMode::Dual,
        ..DiffusionOptions::reference(4)
    };
    let e = run(&m, &mut fresh(), &exact_cached, 0, |_| {}).unwrap_err();
    assert!(e.to_string().contains("excludes cache"), "{e}");
}

#[test]
fn the_mask_token_as_a_chosen_token_is_committed_like_any_other() {
    // Masked state is a boolean: find a mask id that llama-tiny's argmax proposes, and check the
    // committed positions holding it count as decided and the run ends normally.
    let m = model("llama-tiny");
    let found = (8..96u32).find_map(|mask| {
        let mut c = [Canvas::prefix(&[1, 2, 3], 8, mask).unwrap()];
        let report = run(&m, &mut c, &DiffusionOptions::reference(4), 0, |_| {}).unwrap();
        c[0].ids[3..]
            .contains(&mask)
            .then_some((report, c[0].clone()))
    });
    let (report, c) = found.expect("some mask id is proposed by the model");
    assert_eq!(report.forwards, 4);
    assert!(c.masked.iter().all(|&x| !x));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let m = model("llama-tiny");
    let ctx = m.config.max_position_embeddings;
    let err = |mut cs: Vec<Canvas>, opts: DiffusionOptions| {
        run(&m, &mut cs, &opts, 0, |_| {}).unwrap_err().to_string()
    };
    let long = Canvas::infill(&vec![1; ctx - 4], 4, &[2, 3], MASK).unwrap();
    let e = err(vec![long], DiffusionOptions::reference(4));
    assert!(e.contains("exceeds the model's context"), "{e}");
    let ok = Canvas::prefix(&[1], 4, MASK).unwrap();
    let e = err(vec![ok.clone()], DiffusionOptions::reference(0));
    // The library names the option, not a flag: the CLI and the server word it their own way.
    assert!(
        e.contains("steps must be at least 1") && !e.contains("--"),
        "{e}"
    );
    let e = err(
        vec![ok.clone()],
        DiffusionOptions {
            threshold: Some(0.5),
            ..DiffusionOptions::reference(4)
        },
    );
    assert!(e.contains("ranking sampler"), "{e}");
    let e = err(
        vec![Canvas::prefix(&[1], 4, 500).unwrap()],
        DiffusionOptions::reference(4),
    );
    assert!(e.contains("outside the model's vocabulary"), "{e}");
    let e = err(
        vec![ok.clone(), Canvas::prefix(&[1], 5, MASK).unwrap()],
        DiffusionOptions::reference(4),
    );
    assert!(e.contains("one batch needs one length"), "{e}");
    assert!(Canvas::prefix(&[1, MASK], 4, MASK).is_err());
    assert!(Canvas::infill(&[1], 0, &[2], MASK).is_err());

    // More steps than masked positions: clamped, one commit per forward.
    let mut c = [ok];
    let report = run(&m, &mut c, &DiffusionOptions::reference(50), 0, |e| {
        assert_eq!(e.total_steps, 4)
    })
    .unwrap();
    assert_eq!(report.forwards, 4);
}

#[test]
fn cli_generate_and_infill() {
    let dir = fixture("llama-tiny");
    let model = dir.to_str().unwrap();
    let (rc, out, _) = dlm_run([
        "generate",
        model,
        "--mask-id",
        "7",
        "--prompt-ids",
        "1,2,3",
        "--length",
        "6",
        "--steps",
        "3",
        "--json",
        "--trace",
    ]);
    assert_eq!(rc, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ids"].as_array().unwrap().len(), 6);
    assert_eq!(v["trace"].as_array().unwrap().len(), 3);

    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("req.jsonl");
    std::fs::write(
        &jsonl,
        "{\"prompt_ids\": [1, 2], \"suffix_ids\": [5], \"length\": 3}\n{\"prompt_ids\": [4], \"length\": 5}\n",
    )
    .unwrap();
    let (rc, out, err) = dlm_run([
        "infill",
        model,
        "--mask-id",
        "7",
        "--input",
        jsonl.to_str().unwrap(),
        "--steps",
        "3",
        "--sampler",
        "entropy",
        "--json",
    ]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.lines().count(), 2);

    // Bad input through the binary: exit 1 and a message.
    std::fs::write(&jsonl, "{\"prompt_ids\": [1], \"length\": 3}\n{not json\n").unwrap();
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--input", jsonl.to_str().unwrap()], "line 2"),
        (vec!["--prompt-ids", "1,7", "--length", "3"], "mask token"),
        (
            vec!["--prompt-ids", "1", "--length", "3", "--steps", "0"],
            "--steps must be at least 1",
        ),
        (vec!["--prompt-ids", "1", "--length", "70"], "context"),
        (
            vec!["--prompt-ids", "1", "--length", "0"],
            "at least one token",
        ),
    ];
    for (extra, want) in bad {
        let mut args = vec!["generate", model, "--mask-id", "7"];
        args.extend(extra);
        let (rc, _, err) = dlm_run(&args);
        assert_eq!(rc, 1, "{args:?}");
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    let (rc, _, err) = dlm_run([
        "infill",
        model,
        "--mask-id",
        "7",
        "--template",
        "<|mask:0|>",
    ]);
    assert!(rc == 1 && err.contains("at least one token"), "{err}");
    let (rc, _, err) = dlm_run(["generate", model, "--length", "4"]);
    assert!(
        rc == 1 && err.contains("no mask token") && err.contains("--mask-id"),
        "{err}"
    );
}

/// `generate --ar`: prompts from `--prompt-ids` or an `--input` file, one JSON object per
/// prompt with `--json` (the same ids as streaming the text); diffusion-only fields refused.
#[test]
fn cli_generate_ar_takes_input_and_json() {
    let dir = fixture("llama-tiny");
    let model = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("req.jsonl");
    std::fs::write(&jsonl, "{\"prompt_ids\": [1, 2]}\n{\"prompt_ids\": [4]}\n").unwrap();
    let ar = ["generate", model, "--ar", "--max-new-tokens", "4", "--json"];
    let (rc, out, err) = dlm_run(
        ar.iter()
            .copied()
            .chain(["--input", jsonl.to_str().unwrap()]),
    );
    assert_eq!(rc, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["index"], i);
        let ids = v["ids"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.len() <= 4, "{v}");
    }
    // The first request alone, from the flag: the same greedy continuation.
    let (rc, out, err) = dlm_run(ar.iter().copied().chain(["--prompt-ids", "1,2"]));
    assert_eq!(rc, 0, "{err}");
    let alone: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(alone["ids"], lines[0]["ids"]);

    for (line, want) in [
        (
            "{\"prompt_ids\": [1], \"suffix_ids\": [2]}",
            "no prefix or suffix",
        ),
        ("{\"prompt_ids\": [1], \"length\": 3}", "--max-new-tokens"),
        ("{}", "--ar needs"),
        ("{\"prompt\": \"text\"}", "no tokenizer.json"),
    ] {
        std::fs::write(&jsonl, format!("{line}\n")).unwrap();
        let (rc, _, err) = dlm_run([
            "generate",
            model,
            "--ar",
            "--input",
            jsonl.to_str().unwrap(),
        ]);
        assert!(
            rc == 1 && err.contains(want) && !err.contains("panicked"),
            "{line}: {err}"
        );
    }
}

#[test]
fn a_stopped_canvas_leaves_the_batch_and_the_others_finish_as_alone() {
    let m = model("llama-tiny");
    let opts = ranked(Rule::Confidence, 6);
    let fresh = |first: u32| Canvas::prefix(&[first], 12, MASK).unwrap();
    let mut alone = [fresh(2)];
    run(&m, &mut alone, &opts, 0, |_| {}).unwrap();

    let mut batch = [fresh(1), fresh(2)];
    let steps_of_0 = std::cell::Cell::new(0);
    let report = denoiser(&m, &opts)
        .sample_until(
            &mut batch,
            &mut Rng::seed(0),
            &mut |e: &StepEvent| {
                if e.canvas == 0 {
                    steps_of_0.set(e.step);
                }
            },
            // Canvas 0 stops after its second step.
            &|b| b == 0 && steps_of_0.get() >= 2,
        )
        .unwrap();
    assert_eq!(report.steps, vec![2, 6]);
    assert!(batch[0].num_masked() > 0, "stopped part-way");
    assert_eq!(
        batch[1], alone[0],
        "greedy: the batch does not change the other canvas"
    );
}
