//! Writes the `infill` evaluation sets (`dlm eval --task infill`) from held-out plain text: lines
//! of verse or prose with one word, or a span of 3–6 tokens, removed. Each record is
//! `{"prefix", "middle", "suffix"}`: the prefix is the four lines before plus the line's start,
//! the suffix the rest of the line and the next one. A `-nosuffix` copy of each set withholds
//! the suffix, so a DLM's gain from seeing it is measured apart from the model.
//!
//! usage: cargo run --example make_infill_eval -- TOKENIZER_JSON OUT_DIR HELD_OUT_TEXT...
//! (`scripts/make-builtin-model.sh` runs it on the built-in model's held-out plays; seeded.)

use std::io::Write;
use std::path::{Path, PathBuf};

use dlm::data::tokenizer::Tokenizer;
use dlm::rng::Rng;
use serde_json::json;

/// Records per set: at least 300 are to be scored.
const RECORDS: usize = 400;
const CONTEXT_LINES: usize = 4;

/// A line worth a hole: dialogue, not a heading, a speaker's name or a stage direction.
fn is_candidate(line: &str) -> bool {
    let t = line.trim();
    t.split_whitespace().count() >= 6
        && !t.starts_with('[')
        && t.chars().any(|c| c.is_lowercase())
        && !t.starts_with("ACT")
        && !t.starts_with("Scene")
}

/// The word without its trailing punctuation, when it is a word (letters and apostrophes).
fn bare(word: &str) -> Option<(&str, &str)> {
    let cut = word.trim_end_matches([',', '.', ';', ':', '!', '?']);
    let ok = !cut.is_empty() && cut.chars().all(|c| c.is_alphabetic() || c == '\'');
    ok.then(|| (cut, &word[cut.len()..]))
}

struct Hole {
    prefix: String,
    middle: String,
    suffix: String,
}

/// Words `from..to` of line `k` removed, or None when they are not words.
fn hole(lines: &[&str], k: usize, from: usize, to: usize) -> Option<Hole> {
    let words: Vec<&str> = lines[k].split_whitespace().collect();
    let (last, punct) = bare(words[to - 1])?;
    for w in &words[from..to - 1] {
        bare(w)?;
    }
    let mut inner: Vec<&str> = words[from..to - 1].to_vec();
    inner.push(last);
    let context = &lines[k.saturating_sub(CONTEXT_LINES)..k];
    let mut prefix = context.join("\n");
    if !prefix.is_empty() {
        prefix.push('\n');
    }
    prefix.push_str(&words[..from].join(" "));
    let mut suffix = punct.to_string();
    for w in &words[to..] {
        suffix.push(' ');
        suffix.push_str(w);
    }
    if let Some(next) = lines.get(k + 1) {
        suffix.push('\n');
        suffix.push_str(next);
    }
    Some(Hole {
        prefix,
        middle: format!(" {}", inner.join(" ")),
        suffix,
    })
}

fn write_set(out: &Path, name: &str, holes: &[Hole]) -> anyhow::Result<()> {
    for (file, with_suffix) in [
        (format!("{name}.jsonl"), true),
        (format!("{name}-nosuffix.jsonl"), false),
    ] {
        let mut f = std::io::BufWriter::new(std::fs::File::create(out.join(&file))?);
        for h in holes {
            let suffix = if with_suffix { h.suffix.as_str() } else { "" };
            let r = json!({"prefix": h.prefix, "middle": h.middle, "suffix": suffix});
            writeln!(f, "{r}")?;
        }
        println!(
            "wrote {} ({} records)",
            out.join(file).display(),
            holes.len()
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        anyhow::bail!("usage: make_infill_eval TOKENIZER_JSON OUT_DIR HELD_OUT_TEXT...");
    }
    let tok = Tokenizer::from_file(Path::new(&args[0]))?;
    let out = PathBuf::from(&args[1]);
    std::fs::create_dir_all(&out)?;
    let texts: Vec<String> = args[2..]
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<_, _>>()?;
    // Every candidate line of every file, as (file, line), in a seeded random order.
    let lines: Vec<Vec<&str>> = texts
        .iter()
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).collect())
        .collect();
    let mut order: Vec<(usize, usize)> = lines
        .iter()
        .enumerate()
        .flat_map(|(f, ls)| (0..ls.len()).map(move |k| (f, k)))
        .filter(|&(f, k)| is_candidate(lines[f][k]))
        .collect();
    let mut rng = Rng::seed(0);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let pick = |rng: &mut Rng, n: usize| (rng.next_u64() % n as u64) as usize;
    let (mut words, mut spans) = (Vec::new(), Vec::new());
    for &(f, k) in &order {
        let n = lines[f][k].split_whitespace().count();
        // A word with words on both sides of it in the line.
        if words.len() < RECORDS {
            let i = 1 + pick(&mut rng, n - 2);
            if let Some(h) = hole(&lines[f], k, i, i + 1) {
                words.push(h);
                continue;
            }
        }
        // A span of 3–6 tokens: a few tries at 1–4 words.
        if spans.len() < RECORDS {
            for _ in 0..8 {
                let len = 1 + pick(&mut rng, 4);
                if n < len + 2 {
                    continue;
                }
                let i = 1 + pick(&mut rng, n - len - 1);
                let Some(h) = hole(&lines[f], k, i, i + len) else {
                    continue;
                };
                if (3..=6).contains(&tok.encode(&h.middle)?.len()) {
                    spans.push(h);
                    break;
                }
            }
        }
    }
    write_set(&out, "shakespeare-infill-word", &words)?;
    write_set(&out, "shakespeare-infill-span", &spans)?;
    Ok(())
}
