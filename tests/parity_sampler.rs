//! Sampler parity with the PyTorch fixtures (fixtures/README §3e, reference-semantics §2): the
//! top-k confidence sampler with argmax reproduces `sample_prefix_*` and `sample_infill_*` step by
//! step for all three tiny models: the xt fed to every forward, every proposal, every score
//! (atol 1e-5), the schedule's cutoff, the commits per step, the final x0 and the output. Then the
//! accelerated paths (needed head rows, batching) must give the same canvases. The random-keep
//! sampler (reference-semantics §2.2, no fixture trace) is checked step by step against the
//! reference semantics written out in this file, on the same canvases and the repository's RNG.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use dlm::model::{load_dir, LoadedModel};
use dlm::ops::AttentionMask;
use dlm::rng::Rng;
use dlm::sample::canvas::Canvas;
use dlm::sample::denoise::{Denoiser, SampleReport};
use dlm::sample::events::StepEvent;
use dlm::sample::head_rows::HeadRows;
use dlm::sample::options::{DiffusionOptions, Sampler};

const ATOL: f32 = 1e-5;
const MASK: u32 = 7;
const T: usize = 8;

fn ints(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn u32s(t: &Tensor) -> Vec<u32> {
    ints(t).into_iter().map(|x| x as u32).collect()
}

/// Everything the events report, one entry per step.
#[derive(Default, Debug, Clone, PartialEq)]
struct Trace {
    input: Vec<Vec<u32>>,
    proposal: Vec<Vec<u32>>,
    scores: Vec<Vec<f32>>,
    kept: Vec<usize>,
    commits: Vec<usize>,
}

fn fixture_canvas(g: &std::collections::HashMap<String, Tensor>, case: &str) -> Canvas {
    let input = u32s(&g[&format!("sample_{case}_input")]);
    let fixed: Vec<bool> = ints(&g[&format!("sample_{case}_src_mask")])
        .iter()
        .map(|&x| x == 1)
        .collect();
    Canvas::from_src_mask(&input, &fixed, MASK).unwrap()
}

fn run(
    m: &LoadedModel,
    canvases: &mut [Canvas],
    opts: &DiffusionOptions,
) -> (Vec<Trace>, SampleReport) {
    let mut traces = vec![Trace::default(); canvases.len()];
    let mut on_step = |e: &StepEvent| {
        let tr = &mut traces[e.canvas];
        tr.input.push(e.input.to_vec());
        tr.proposal.push(e.proposal.to_vec());
        tr.scores.push(e.scores.to_vec());
        tr.kept.extend(e.kept_masked);
        tr.commits.push(e.committed);
    };
    let mut rng = Rng::seed(0);
    let denoiser = Denoiser {
        model: m.model.as_ref(),
        device: &Device::Cpu,
        opts,
    };
    let report = denoiser.sample(canvases, &mut rng, &mut on_step).unwrap();
    (traces, report)
}

#[test]
fn topk_confidence_argmax_matches_the_fixture_traces() {
    for name in TINY {
        let g = golden(name);
        let m = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(golden_json(name)["mask_id"], 7);
        for case in ["prefix", "infill"] {
            let key = |k: &str| format!("sample_{case}_{k}");
            let what = format!("{name} {case}");
            let mut c = [fixture_canvas(&g, case)];
            let (tr, report) = run(&m, &mut c, &DiffusionOptions::reference(T));
            let tr = &tr[0];
            assert_eq!(report.forwards, T, "{what}: forwards");
            let trace = Tensor::new(tr.input.clone(), &Device::Cpu).unwrap();
            assert_eq!(u32s(&trace), u32s(&g[&key("trace")]), "{what}: trace");
            let x0 = Tensor::new(tr.proposal.clone(), &Device::Cpu).unwrap();
            assert_eq!(u32s(&x0), u32s(&g[&key("x0_trace")]), "{what}: x0_trace");
            let scores = Tensor::new(tr.scores.clone(), &Device::Cpu).unwrap();
            assert_close(
                &format!("{what} score_trace"),
                &scores,
                &g[&key("score_trace")],
                ATOL,
            );
            let want_cut: Vec<usize> = ints(&g[&key("cutoff_len")])
                .iter()
                .map(|&x| x as usize)
                .collect();
            assert_eq!(tr.kept, want_cut, "{what}: cutoff_len");
            let want_commits: Vec<usize> = ints(&g[&key("commits")])
                .iter()
                .map(|&x| x as usize)
                .collect();
            assert_eq!(tr.commits[..T - 1], want_commits[..], "{what}: commits");
            assert_eq!(c[0].ids, u32s(&g[&key("x0")]), "{what}: x0");
            assert_eq!(c[0].output(), u32s(&g[&key("output")]), "{what}: output");
            assert!(c[0].masked.iter().all(|&m| !m));
            println!("{what}: trace, x0_trace, cutoff_len, commits, x0, output exact");
        }
    }
}

#[test]
fn needed_rows_and_batching_give_the_same_canvases() {
    for name in TINY {
        let g = golden(name);
        let m = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let exact = DiffusionOptions::reference(T);
        let fast = DiffusionOptions {
            head_rows: HeadRows::Needed,
            ..exact.clone()
        };
        // Both fixture canvases have 16 positions, so they share one batched forward.
        let mut one_by_one = Vec::new();
        let mut exact_rows = 0;
        for case in ["prefix", "infill"] {
            let mut c = [fixture_canvas(&g, case)];
            let (tr, rep) = run(&m, &mut c, &exact);
            exact_rows += rep.head_rows;
            one_by_one.push((c[0].clone(), tr[0].clone()));
        }
        let mut batch = [fixture_canvas(&g, "prefix"), fixture_canvas(&g, "infill")];
        let (traces, report) = run(&m, &mut batch, &fast);
        for (b, (canvas, tr)) in one_by_one.iter().enumerate() {
            assert_eq!(&batch[b], canvas, "{name} canvas {b}");
            let fast_tr = &traces[b];
            // The fast path may stop early; the steps it runs are the reference's steps.
            for (k, row) in fast_tr.input.iter().enumerate() {
                assert_eq!(row, &tr.input[k], "{name} canvas {b} step {k}");
                assert_eq!(fast_tr.proposal[k], tr.proposal[k]);
                for (i, s) in fast_tr.scores[k].iter().enumerate() {
                    assert!(s.is_nan() || (s - tr.scores[k][i]).abs() <= ATOL);
                }
            }
        }
        println!(
            "{name}: head rows {} (needed, batched) vs {exact_rows} (exact)",
            report.head_rows
        );
        assert!(report.head_rows < exact_rows);
    }
}

/// One step of a random-keep run: the canvas fed to the forward, the proposal at every position,
/// the positions that committed, and the canvas after.
#[derive(Debug, Clone, PartialEq)]
struct KeepStep {
    input: Vec<u32>,
    proposal: Vec<u32>,
    committed: Vec<usize>,
    tokens: Vec<u32>,
}

/// The reference's random-keep sampler (`model.py::generate_samples`, reference-semantics
/// §2.1–2.2) with argmax proposals, written from the semantics: `steps` forwards; forward k
/// proposes, at every still-masked position i, argmax of logits row i − 1 (position 0 keeps its
/// first token); then at loop step t = steps − 1 − k each still-masked position commits its
/// proposal independently with probability 1/(t + 1), and after the last forward (t = 0) every
/// remaining position commits. Committed and fixed positions never change.
///
/// Draws from `rng`, in the order the sampler takes them: one seed per proposed position (every
/// position on the exact path; argmax leaves them unused), then one uniform per still-masked
/// position, in position order.
fn random_keep_reference(
    m: &LoadedModel,
    canvas: &Canvas,
    steps: usize,
    rng: &mut Rng,
) -> Vec<KeepStep> {
    let (mut ids, mut masked) = (canvas.ids.clone(), canvas.masked.clone());
    let l = ids.len();
    let mut trace = Vec::new();
    for k in 0..steps {
        let x = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = m.model.forward(&x, &AttentionMask::Bidirectional).unwrap();
        let best: Vec<u32> = logits
            .squeeze(0)
            .unwrap()
            .argmax(candle_core::D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let proposal: Vec<u32> = (0..l)
            .map(|i| match (masked[i], i) {
                (false, _) => ids[i],
                (true, 0) => canvas.first,
                (true, _) => best[i - 1],
            })
            .collect();
        (0..l).for_each(|_| {
            rng.next_u64();
        });
        let t = steps - 1 - k;
        let still: Vec<usize> = (0..l).filter(|&i| masked[i]).collect();
        let committed: Vec<usize> = if t == 0 {
            still
        } else {
            let p = 1.0 / (t as f64 + 1.0);
            still
                .into_iter()
                .filter(|_| rng.uniform_f64() < p)
                .collect()
        };
        let input = ids.clone();
        for &i in &committed {
            ids[i] = proposal[i];
            masked[i] = false;
        }
        trace.push(KeepStep {
            input,
            proposal,
            committed,
            tokens: ids.clone(),
        });
    }
    trace
}

#[test]
fn random_keep_argmax_follows_the_reference_semantics_step_by_step() {
    let opts = DiffusionOptions {
        sampler: Sampler::RandomKeep,
        ..DiffusionOptions::reference(T)
    };
    // Steps that commit some but not all of the masked positions: the draws decided them.
    let mut partial_steps = 0;
    for name in TINY {
        let g = golden(name);
        let m = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        for case in ["prefix", "infill"] {
            for seed in 0..3 {
                let what = format!("{name} {case} seed {seed}");
                let start = fixture_canvas(&g, case);
                let mut want_rng = Rng::seed(seed);
                let want = random_keep_reference(&m, &start, T, &mut want_rng);

                let mut c = [start.clone()];
                let mut got: Vec<KeepStep> = Vec::new();
                let mut masked_before = start.masked.clone();
                let mut on_step = |e: &StepEvent| {
                    let committed: Vec<usize> = (0..e.masked.len())
                        .filter(|&i| masked_before[i] && !e.masked[i])
                        .collect();
                    assert_eq!(e.committed, committed.len(), "{what}: committed count");
                    // Fixed and committed positions stay decided, with their tokens.
                    for i in (0..e.masked.len()).filter(|&i| !masked_before[i]) {
                        assert!(!e.masked[i], "{what}: position {i} masked again");
                        assert_eq!(e.tokens[i], e.input[i], "{what}: position {i} changed");
                    }
                    let still = masked_before.iter().filter(|&&m| m).count();
                    if !committed.is_empty() && committed.len() < still {
                        partial_steps += 1;
                    }
                    masked_before = e.masked.to_vec();
                    got.push(KeepStep {
                        input: e.input.to_vec(),
                        proposal: e.proposal.to_vec(),
                        committed,
                        tokens: e.tokens.to_vec(),
                    });
                };
                let mut rng = Rng::seed(seed);
                let denoiser = Denoiser {
                    model: m.model.as_ref(),
                    device: &Device::Cpu,
                    opts: &opts,
                };
                let report = denoiser.sample(&mut c, &mut rng, &mut on_step).unwrap();
                assert_eq!(report.forwards, T, "{what}: forwards");
                assert_eq!(got.len(), T, "{what}: steps");
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g, w, "{what}: step {k}");
                }
                assert_eq!(c[0].ids, want[T - 1].tokens, "{what}: final canvas");
                assert!(c[0].masked.iter().all(|&m| !m), "{what}: masked left");
                assert_eq!(rng, want_rng, "{what}: draws taken");
                println!(
                    "{what}: commits per step {:?}",
                    got.iter().map(|s| s.committed.len()).collect::<Vec<_>>()
                );
            }
        }
    }
    assert!(partial_steps > 0, "no step committed a proper subset");
}
