//! A run driven by a program through `dlm::train::run`, without the command line; and a
//! validation file that cannot be read stops the run instead of leaving it unvalidated.

use std::path::PathBuf;

use dlm::data::corpus::CorpusOptions;
use dlm::data::packing::PackedSource;
use dlm::data::tokenizer::Tokenizer;
use dlm::model::ModelConfig;
use dlm::train::adamw::AdamWConfig;
use dlm::train::base::load_base;
use dlm::train::objective::Objective;
use dlm::train::run::{NewRun, ResumeChanges, Run, RunOptions};
use dlm::train::run_dir::{resume_point, RunFiles};
use dlm::train::schedule::{Decay, Schedule};
use dlm::train::sources::{packed_sources, Sources};
use dlm::train::trainer::RunConfig;

mod common;

fn sources(run: &RunConfig, c: &ModelConfig, t: &Tokenizer) -> dlm::Result<Sources<PackedSource>> {
    packed_sources(run, c, t, CorpusOptions::default(), 0.0)
}

#[test]
fn a_program_starts_inspects_and_resumes_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let base = common::tiny_dlm_dir(tmp.path());
    let (config, weights, tokenizer, mask_id) = load_base(&base, None, 0).unwrap();
    let steps = 2;
    let run = RunConfig {
        command: "program".into(),
        objective: Objective::diffusion(config.arch, mask_id, false, 0).unwrap(),
        seq_len: 32,
        micro_batch: 2,
        grad_accum: 1,
        optimizer: AdamWConfig::default(),
        schedule: Schedule {
            peak_lr: 1e-3,
            warmup_steps: 0,
            total_steps: steps,
            decay: Decay::Constant,
            min_lr_ratio: 0.1,
        },
        max_grad_norm: Some(1.0),
        seed: 0,
        max_steps: steps,
        val_every: 1,
        val_batches: 1,
        save_every: 1,
        keep_last: 0,
        skip_nonfinite: false,
        data: vec![PathBuf::from(common::training_data())],
        val_data: vec![common::fixture("data/wiki_small.txt")],
        base: Some(base.clone()),
        lora: None,
        dtype: Default::default(),
        dropout: 0.0,
    };
    let options = RunOptions {
        device: "cpu".parse().unwrap(),
        world_size: None,
        zero1: false,
        shuffle_buffer: 8,
        show_progress: false,
    };
    let dir = tmp.path().join("run");
    let new = NewRun {
        run: run.clone(),
        config,
        weights,
        tokenizer,
    };
    let started = Run::start(&options, &dir, new, sources).unwrap();
    assert_eq!(
        (started.step(), started.rank(), started.world_size()),
        (0, 0, 1)
    );
    assert!(!started.val_batches().is_empty());
    let summary = started.train().unwrap();
    assert_eq!(summary.steps, steps);
    assert!(RunFiles::holds_run(&dir).unwrap());
    assert_eq!(RunFiles::load_config(&dir).unwrap(), run);
    let (ckpt, _, _) = resume_point(&dir).unwrap();
    assert!(ckpt.ends_with("step-00000002"), "{}", ckpt.display());

    // A second start in the same directory is refused; a resume continues.
    let (config, weights, tokenizer, _) = load_base(&base, None, 0).unwrap();
    let again = NewRun {
        run: run.clone(),
        config,
        weights,
        tokenizer,
    };
    let refused = Run::start(&options, &dir, again, sources).err().unwrap();
    assert!(
        refused.to_string().contains("already holds a run"),
        "{refused}"
    );
    let changes = ResumeChanges {
        max_steps: Some(3),
        ..Default::default()
    };
    let resumed = Run::resume(&options, &dir, changes, sources).unwrap();
    assert_eq!(resumed.step(), steps);
    assert_eq!(resumed.train().unwrap().steps, 3);
}

#[test]
fn a_malformed_validation_file_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::train_tokenizer(tmp.path());
    let bad = tmp.path().join("held_out.jsonl");
    std::fs::write(&bad, "{\"text\": \"a fine first line\"}\n{not json\n").unwrap();
    let run = tmp.path().join("run");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    #[rustfmt::skip]
    let stderr = common::dlm_fails([
        "pretrain", "--config", "tiny", "--tokenizer", &path(&tok),
        "--data", &common::training_data(), "--val-data", &path(&bad),
        "--seq-len", "32", "--micro-batch", "2", "--max-steps", "1",
        "--no-progress", "--out", &path(&run),
    ]);
    assert!(stderr.contains("held_out.jsonl:2"), "{stderr}");
    assert!(!stderr.contains("no validation documents"), "{stderr}");
}
