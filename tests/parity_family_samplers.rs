//! The families' own samplers against their PyTorch references (fixtures/README §7.5): LLaDA's
//! `generate()` (cases base, cfg, uneven) and Dream's `diffusion_generate()` (entropy,
//! maskgit_plus, topk_margin) step by step, in the library and through `dlm generate --json
//! --trace`: every canvas of the trace, the output, the tokens committed per step and the argmax
//! x0 at every position exactly; x0_p / confidence at every position within atol 2e-4 (§7.7).
//! Each model gets its family's sampler and shift without `--sampler`. Then the sampled paths
//! (Gumbel-max, random remasking, top-p, alg_temp, origin), which no fixture covers: the same
//! canvas under a seed, and the rules the references keep (frozen commits, per-step counts,
//! nothing right of LLaDA's current block).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::*;
use dlm::model::{load_dir, LoadedModel};
use dlm::rng::Rng;
use dlm::sample::canvas::Canvas;
use dlm::sample::denoise::{Denoiser, SampleReport};
use dlm::sample::dream::Alg;
use dlm::sample::events::StepEvent;
use dlm::sample::family::FamilySettings;
use dlm::sample::kv_reuse::CacheMode;
use dlm::sample::llada::{EosGuards, Llada, Remasking};
use dlm::sample::options::{DiffusionOptions, Sampler};
use dlm::sample::request::{SamplerName, SamplerSettings};

/// §7.7: sampler scores follow the logit error, not their own size.
const SCORE_ATOL: f32 = 2e-4;

/// One fixture case and the settings that reproduce it.
struct Case {
    fixture: &'static str,
    name: &'static str,
    steps: usize,
    block_length: Option<usize>,
    family: FamilySettings,
    /// The ranking score's key: LLaDA's `x0_p`, Dream's `confidence`.
    score: &'static str,
}

fn cases() -> Vec<Case> {
    let llada = |name, steps, block, cfg| Case {
        fixture: "llada-tiny",
        name,
        steps,
        block_length: Some(block),
        family: FamilySettings {
            cfg_scale: Some(cfg),
            ..Default::default()
        },
        score: "x0_p",
    };
    let dream = |name, alg| Case {
        fixture: "dream-tiny",
        name,
        steps: 8,
        block_length: None,
        family: FamilySettings {
            alg: Some(alg),
            ..Default::default()
        },
        score: "confidence",
    };
    vec![
        llada("base", 8, 8, 0.0),
        llada("cfg", 8, 8, 1.0),
        llada("uneven", 5, 12, 0.0),
        dream("entropy", Alg::Entropy),
        dream("maskgit_plus", Alg::MaskgitPlus),
        dream("topk_margin", Alg::TopkMargin),
    ]
}

fn ints(t: &Tensor) -> Vec<i64> {
    let t = t.to_dtype(DType::I64).unwrap();
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn u32s(t: &Tensor) -> Vec<u32> {
    ints(t).into_iter().map(|x| x as u32).collect()
}

/// The golden values of one case.
struct Golden {
    prompt: Vec<u32>,
    /// [steps + 1, P + G]
    trace: Vec<Vec<u32>>,
    output: Vec<u32>,
    num_transfer_tokens: Vec<usize>,
    /// [steps, P + G]
    x0: Vec<Vec<u32>>,
    score: Tensor,
}

impl Golden {
    fn of(g: &HashMap<String, Tensor>, case: &Case) -> Self {
        let key = |k: &str| &g[&format!("sample_{}_{k}", case.name)];
        let rows = |t: &Tensor| -> Vec<Vec<u32>> {
            let w = t.dim(1).unwrap();
            u32s(t).chunks(w).map(<[u32]>::to_vec).collect()
        };
        Self {
            prompt: u32s(key("prompt")),
            trace: rows(key("trace")),
            output: u32s(key("output")),
            num_transfer_tokens: ints(key("num_transfer_tokens"))
                .into_iter()
                .map(|x| x as usize)
                .collect(),
            x0: rows(key("x0")),
            score: key(case.score).clone(),
        }
    }

    fn generated(&self) -> usize {
        self.output.len() - self.prompt.len()
    }
}

/// What a run reports, one entry per step.
#[derive(Debug, Default, Clone, PartialEq)]
struct Steps {
    tokens: Vec<Vec<u32>>,
    x0: Vec<Vec<u32>>,
    ranks: Vec<Vec<f32>>,
    committed: Vec<usize>,
}

fn settings(case: &Case, exact: bool) -> SamplerSettings {
    SamplerSettings {
        steps: Some(case.steps),
        sampler: None,
        temperature: Some(0.0),
        top_p: None,
        top_k: None,
        threshold: None,
        block_length: case.block_length,
        exact,
        cache: CacheMode::None,
        family: case.family,
    }
}

fn run(
    m: &LoadedModel,
    canvases: &mut [Canvas],
    opts: &DiffusionOptions,
    seed: u64,
) -> (Vec<Steps>, SampleReport) {
    let mut steps = vec![Steps::default(); canvases.len()];
    let mut on_step = |e: &StepEvent| {
        let s = &mut steps[e.canvas];
        s.tokens.push(e.tokens.to_vec());
        s.x0.push(e.x0.to_vec());
        s.ranks.push(e.ranks.to_vec());
        s.committed.push(e.committed);
    };
    let denoiser = Denoiser {
        model: m.model.as_ref(),
        device: &Device::Cpu,
        opts,
    };
    let report = denoiser
        .sample(canvases, &mut Rng::seed(seed), &mut on_step)
        .unwrap();
    (steps, report)
}

/// Checks one run's steps against the golden case (every position of x0 and scores).
fn check(what: &str, got: &Steps, want: &Golden) {
    assert_eq!(got.tokens.len(), want.x0.len(), "{what}: steps");
    assert_eq!(got.tokens, want.trace[1..], "{what}: trace");
    assert_eq!(got.committed, want.num_transfer_tokens, "{what}: commits");
    assert_eq!(got.x0, want.x0, "{what}: x0");
    let ranks = Tensor::new(got.ranks.clone(), &Device::Cpu).unwrap();
    assert_close(&format!("{what} scores"), &ranks, &want.score, SCORE_ATOL);
}

#[test]
fn family_samplers_reproduce_the_fixture_traces() {
    for case in cases() {
        let what = format!("{} {}", case.fixture, case.name);
        let m = load_dir(&fixture(case.fixture), DType::F32, &Device::Cpu).unwrap();
        let want = Golden::of(&golden(case.fixture), &case);
        let mask_id = golden_json(case.fixture)["mask_id"].as_u64().unwrap() as u32;
        assert_eq!(m.config.mask_token_id, Some(mask_id));
        // No sampler named: the model's family picks its own, with its shift.
        let opts = settings(&case, true).options(m.config.arch).unwrap();
        let start = Canvas::prefix(&want.prompt, want.generated(), mask_id).unwrap();
        assert_eq!(start.ids, want.trace[0], "{what}: initial canvas");
        let mut c = [start.clone()];
        let (steps, report) = run(&m, &mut c, &opts, 0);
        assert_eq!(report.forwards, case.steps, "{what}: forwards");
        check(&what, &steps[0], &want);
        assert_eq!(c[0].ids, want.output, "{what}: output");
        assert!(c[0].masked.iter().all(|&m| !m), "{what}: masked left");

        // Needed rows, two canvases in one batch (under cfg: four rows per forward): the same
        // canvases, and the same scores wherever the head ran.
        let fast = settings(&case, false).options(m.config.arch).unwrap();
        let mut batch = [start.clone(), start];
        let (fast_steps, fast_report) = run(&m, &mut batch, &fast, 0);
        for (b, s) in fast_steps.iter().enumerate() {
            assert_eq!(batch[b].ids, want.output, "{what}: batched canvas {b}");
            assert_eq!(s.tokens, steps[0].tokens, "{what}: batched trace {b}");
            assert_eq!(s.committed, steps[0].committed);
            for (k, row) in s.ranks.iter().enumerate() {
                for (i, r) in row.iter().enumerate() {
                    let exact = steps[0].ranks[k][i];
                    assert!(
                        r.is_nan() || (r - exact).abs() <= 1e-6,
                        "{what}: step {k} rank {i}"
                    );
                }
            }
        }
        println!(
            "{what}: trace, output, commits, x0 exact; head rows {} (exact) vs {} (needed, 2 canvases)",
            report.head_rows, fast_report.head_rows
        );
    }
}

#[test]
fn cli_generate_traces_match_the_fixtures() {
    for case in cases() {
        let what = format!("{} {} (CLI)", case.fixture, case.name);
        let want = Golden::of(&golden(case.fixture), &case);
        let dir = fixture(case.fixture);
        let prompt: Vec<String> = want.prompt.iter().map(u32::to_string).collect();
        let mut args: Vec<String> = [
            "generate",
            dir.to_str().unwrap(),
            "--prompt-ids",
            &prompt.join(","),
            "--length",
            &want.generated().to_string(),
            "--steps",
            &case.steps.to_string(),
            "--exact",
            "--json",
            "--trace",
        ]
        .map(String::from)
        .to_vec();
        let flag = |k: &str, v: String| [k.to_string(), v];
        if let Some(b) = case.block_length {
            args.extend(flag("--block-length", b.to_string()));
        }
        if let Some(c) = case.family.cfg_scale.filter(|&c| c > 0.0) {
            args.extend(flag("--cfg-scale", c.to_string()));
        }
        if let Some(a) = case.family.alg {
            args.extend(flag("--alg", a.to_string()));
        }
        let out = dlm(&args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let canvas: Vec<u32> = serde_json::from_value(v["canvas"].clone()).unwrap();
        assert_eq!(canvas, want.output, "{what}: output");
        let mut got = Steps::default();
        let mut masked_before: Vec<bool> = (0..want.output.len())
            .map(|i| i >= want.prompt.len())
            .collect();
        for step in v["trace"].as_array().unwrap() {
            let field = |k: &str| step[k].clone();
            let masked: Vec<bool> = serde_json::from_value(field("masked")).unwrap();
            let committed = (0..masked.len())
                .filter(|&i| masked_before[i] && !masked[i])
                .count();
            got.committed.push(committed);
            masked_before = masked;
            got.tokens
                .push(serde_json::from_value(field("tokens")).unwrap());
            got.x0.push(serde_json::from_value(field("x0")).unwrap());
            let ranks: Vec<Option<f32>> = serde_json::from_value(field("confidence")).unwrap();
            got.ranks
                .push(ranks.into_iter().map(|r| r.unwrap_or(f32::NAN)).collect());
        }
        check(&what, &got, &want);
    }
}

/// Draws decide these runs, so there is no fixture trace: the canvas is the same under a seed,
/// the commits per step follow the schedule, committed tokens stay, and LLaDA proposes nothing
/// right of its current block.
#[test]
fn sampled_family_runs_are_seeded_and_keep_their_rules() {
    let llada = load_dir(&fixture("llada-tiny"), DType::F32, &Device::Cpu).unwrap();
    let dream = load_dir(&fixture("dream-tiny"), DType::F32, &Device::Cpu).unwrap();
    let base = |sampler, temperature: f32, top_p, block_length, family| SamplerSettings {
        steps: Some(8),
        sampler: Some(sampler),
        temperature: Some(temperature),
        top_p,
        top_k: None,
        threshold: None,
        block_length,
        exact: false,
        cache: CacheMode::None,
        family,
    };
    let random = FamilySettings {
        remasking: Some(Remasking::Random),
        ..Default::default()
    };
    let guided = FamilySettings {
        cfg_scale: Some(0.5),
        ..Default::default()
    };
    let with_alg = |alg, alg_temp| FamilySettings {
        alg: Some(alg),
        alg_temp,
        ..Default::default()
    };
    // (model, settings, commits per step when the schedule fixes them)
    let runs: Vec<(&LoadedModel, SamplerSettings, Option<Vec<usize>>)> = vec![
        (
            &llada,
            base(SamplerName::Llada, 0.8, None, Some(8), random),
            Some(vec![2; 8]),
        ),
        (
            &llada,
            base(SamplerName::Llada, 1.0, None, Some(8), guided),
            Some(vec![2; 8]),
        ),
        (
            &llada,
            base(SamplerName::Llada, 0.0, None, Some(8), random),
            Some(vec![2; 8]),
        ),
        (
            &dream,
            base(
                SamplerName::Dream,
                0.7,
                Some(0.9),
                None,
                with_alg(Alg::Entropy, None),
            ),
            Some(vec![1, 2, 2, 2, 2, 2, 2, 3]),
        ),
        (
            &dream,
            base(
                SamplerName::Dream,
                0.0,
                None,
                None,
                with_alg(Alg::MaskgitPlus, Some(0.5)),
            ),
            Some(vec![1, 2, 2, 2, 2, 2, 2, 3]),
        ),
        (
            &dream,
            base(
                SamplerName::Dream,
                1.0,
                None,
                None,
                with_alg(Alg::Origin, None),
            ),
            None,
        ),
    ];
    let prompt = [4, 2, 54, 33, 121];
    for (k, (m, s, counts)) in runs.iter().enumerate() {
        let opts = s.options(m.config.arch).unwrap();
        let mask_id = m.config.mask_token_id.unwrap();
        let start = Canvas::prefix(&prompt, 16, mask_id).unwrap();
        let mut one = [start.clone()];
        let (steps, _) = run(m, &mut one, &opts, 11);
        let mut again = [start.clone()];
        let (steps_again, _) = run(m, &mut again, &opts, 11);
        // Debug text compares the NaN scores of positions the head skipped, too.
        let seeded = format!("{one:?} {steps:?}") == format!("{again:?} {steps_again:?}");
        assert!(seeded, "run {k}: not the same under one seed");
        let mut other = [start.clone()];
        run(m, &mut other, &opts, 12);
        assert_ne!(
            one[0].ids, other[0].ids,
            "run {k}: the draws decided nothing"
        );
        let tokens = &steps[0].tokens;
        assert_eq!(tokens.len(), 8, "run {k}: steps");
        if let Some(counts) = counts {
            assert_eq!(&steps[0].committed, counts, "run {k}: commits");
        }
        assert_eq!(one[0].num_masked(), 0, "run {k}: masked left");
        let mut before = start.ids.clone();
        for (step, row) in tokens.iter().enumerate() {
            for (i, (&b, &t)) in before.iter().zip(row).enumerate() {
                assert!(
                    b == mask_id || b == t,
                    "run {k} step {step}: position {i} changed"
                );
                // LLaDA's blocks: the second half stays masked while the first is filled.
                if s.sampler == Some(SamplerName::Llada) && step < 4 && i >= prompt.len() + 8 {
                    assert_eq!(
                        t, mask_id,
                        "run {k} step {step}: position {i} right of the block"
                    );
                }
            }
            before = row.clone();
        }
        println!(
            "run {k}: seed 11 {:?}, seed 12 {:?}",
            one[0].ids, other[0].ids
        );
    }
}

/// LLaDA's end-of-text guards on llada-tiny, with the model's most generated token standing in
/// for EOS and EOT (the released ids, 126081 and 126348, lie outside its vocabulary of 128, and
/// are refused there): `logits_eos_inf` keeps it out of every proposal and of the output;
/// `confidence_eos_eot_inf` ranks each position proposing it with probability 0.
#[test]
fn llada_end_of_text_guards_bar_and_defer_the_token() {
    let m = load_dir(&fixture("llada-tiny"), DType::F32, &Device::Cpu).unwrap();
    let mask_id = m.config.mask_token_id.unwrap();
    let prompt = [4, 2, 54, 33, 121];
    let start = Canvas::prefix(&prompt, 16, mask_id).unwrap();
    let case = &cases()[0];
    let base = settings(case, false).options(m.config.arch).unwrap();
    let with = |eos: EosGuards| DiffusionOptions {
        sampler: Sampler::Llada(Llada {
            eos,
            ..Llada::default()
        }),
        ..base.clone()
    };
    let mut plain = [start.clone()];
    run(&m, &mut plain, &base, 1);
    let generated = &plain[0].ids[prompt.len()..];
    let token = *generated
        .iter()
        .max_by_key(|&&t| generated.iter().filter(|&&u| u == t).count())
        .unwrap();
    // The default ids do not fit this vocabulary: a clear error, not an index panic.
    let barred = EosGuards {
        logits_eos_inf: true,
        ..EosGuards::default()
    };
    let denoiser = Denoiser {
        model: m.model.as_ref(),
        device: &Device::Cpu,
        opts: &with(barred),
    };
    let e = denoiser
        .sample(&mut [start.clone()], &mut Rng::seed(1), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("EOS id 126081") && e.contains("vocabulary (128)"),
        "{e}"
    );

    let ids = |logits_eos_inf, confidence_eos_eot_inf| EosGuards {
        logits_eos_inf,
        confidence_eos_eot_inf,
        eos_id: token,
        eot_id: token,
    };
    let mut barred = [start.clone()];
    let (steps, _) = run(&m, &mut barred, &with(ids(true, false)), 1);
    assert!(!barred[0].ids[prompt.len()..].contains(&token));
    assert!(steps[0].x0.iter().flatten().all(|&t| t != token));
    assert_eq!(barred[0].num_masked(), 0);

    let mut deferred = [start.clone()];
    let (steps, _) = run(&m, &mut deferred, &with(ids(false, true)), 1);
    let mut proposed = 0;
    let s = &steps[0];
    let canvas_before = std::iter::once(&start.ids).chain(&s.tokens);
    for ((before, x0), ranks) in canvas_before.zip(&s.x0).zip(&s.ranks) {
        for i in (0..before.len()).filter(|&i| before[i] == mask_id && x0[i] == token) {
            assert_eq!(
                ranks[i], 0.0,
                "position {i} proposing the token ranks above 0"
            );
            proposed += 1;
        }
    }
    assert!(proposed > 0, "the token was never proposed");
    assert_ne!(deferred[0].ids, plain[0].ids);
}

/// The accelerations (threshold, blocks, prefix and dual caches, and a batch of canvases) run on
/// both families with a ranking sampler and each family's shift: every canvas filled, committed
/// tokens never changed, nothing right of the current block committed before it, the same
/// canvases under one seed; with no cache, a batch of one prompt gives each canvas what a single
/// run gives (the rows are independent).
#[test]
fn accelerations_run_on_both_families() {
    let prompt = [4, 2, 54, 33, 121];
    for name in ["llada-tiny", "dream-tiny"] {
        let m = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let mask_id = m.config.mask_token_id.unwrap();
        let runs = [
            (SamplerName::Confidence, Some(0.5), None, CacheMode::None),
            (SamplerName::Margin, None, Some(4), CacheMode::None),
            (SamplerName::Entropy, None, Some(4), CacheMode::Prefix),
            (SamplerName::Confidence, None, Some(4), CacheMode::Dual),
            (SamplerName::Random, Some(0.3), Some(8), CacheMode::Dual),
        ];
        for (sampler, threshold, block_length, cache) in runs {
            let what = format!("{name} {sampler:?} {threshold:?} {block_length:?} {cache:?}");
            let s = SamplerSettings {
                steps: Some(16),
                sampler: Some(sampler),
                temperature: Some(0.0),
                top_p: None,
                top_k: None,
                threshold,
                block_length,
                exact: false,
                cache,
                family: FamilySettings::default(),
            };
            let opts = s.options(m.config.arch).unwrap();
            let start = Canvas::prefix(&prompt, 16, mask_id).unwrap();
            let mut batch = vec![start.clone(); 3];
            let (steps, report) = run(&m, &mut batch, &opts, 5);
            let mut again = vec![start.clone(); 3];
            run(&m, &mut again, &opts, 5);
            let ids = |b: &[Canvas]| b.iter().map(|c| c.ids.clone()).collect::<Vec<_>>();
            assert_eq!(
                ids(&batch),
                ids(&again),
                "{what}: not the same under one seed"
            );
            assert!(report.forwards >= 1, "{what}: no forward");
            for (c, canvas) in batch.iter().enumerate() {
                assert_eq!(canvas.num_masked(), 0, "{what}: canvas {c} has masks left");
                let mut before = start.ids.clone();
                for (step, row) in steps[c].tokens.iter().enumerate() {
                    for (i, (&b, &t)) in before.iter().zip(row).enumerate() {
                        assert!(b == mask_id || b == t, "{what} step {step}: {i} changed");
                    }
                    before = row.clone();
                }
                if let Some(block) = block_length {
                    // The first block is filled before anything right of it commits.
                    let first = steps[c]
                        .tokens
                        .iter()
                        .position(|row| row[prompt.len() + block..].iter().any(|&t| t != mask_id))
                        .unwrap();
                    let row = &steps[c].tokens[first];
                    assert!(
                        row[prompt.len()..prompt.len() + block]
                            .iter()
                            .all(|&t| t != mask_id),
                        "{what}: a position right of the first block committed early"
                    );
                }
            }
            if cache == CacheMode::None && sampler != SamplerName::Random {
                let mut single = [start.clone()];
                run(&m, &mut single, &opts, 5);
                assert_eq!(batch[1].ids, single[0].ids, "{what}: batch row differs");
            }
        }
    }
}
