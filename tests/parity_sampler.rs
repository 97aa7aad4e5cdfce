//! Sampler parity with the PyTorch fixtures (fixtures/README §3e, reference-semantics §2): the
//! top-k confidence sampler with argmax reproduces `sample_prefix_*` and `sample_infill_*` step by
//! step for all three tiny models: the xt fed to every forward, every proposal, every score
//! (atol 1e-5), the schedule's cutoff, the commits per step, the final x0 and the output. Then the
//! accelerated paths (needed head rows, batching) must give the same canvases.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use dlm::model::{load_dir, LoadedModel};
use dlm::rng::Rng;
use dlm::sample::canvas::Canvas;
use dlm::sample::denoise::{Denoiser, SampleReport};
use dlm::sample::events::StepEvent;
use dlm::sample::head_rows::HeadRows;
use dlm::sample::options::DiffusionOptions;

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
