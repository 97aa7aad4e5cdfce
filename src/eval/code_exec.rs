//! pass@1 for HumanEval infilling (reference-semantics §3.5): the program the official toolkit
//! runs — prompt + completion + suffix, the tests, `check(entry_point)` — executed by `python3`
//! in a fresh temporary directory with a time limit. A completion passes if it exits with 0.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one program may run (the official toolkit's default is 3 s).
pub const TIME_LIMIT: Duration = Duration::from_secs(5);

/// One HumanEval-infilling problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub prompt: String,
    pub suffix: String,
    pub canonical_solution: String,
    pub test: String,
    pub entry_point: String,
}

impl Program {
    pub fn from_record(r: &Value) -> Option<Self> {
        let f = |k: &str| r.get(k)?.as_str().map(String::from);
        Some(Self {
            prompt: f("prompt")?,
            suffix: f("suffix")?,
            canonical_solution: f("canonical_solution")?,
            test: f("test")?,
            entry_point: f("entry_point")?,
        })
    }

    /// The file the toolkit executes for a completion of the middle.
    pub fn source(&self, completion: &str) -> String {
        format!(
            "{}{completion}{}\n{}\ncheck({})\n",
            self.prompt, self.suffix, self.test, self.entry_point
        )
    }
}

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dlm-eval-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the program with `completion` in the middle; true if it exits with status 0 in time.
/// A missing `python3`, a crash or a timeout counts as a failure.
pub fn passes(p: &Program, completion: &str) -> bool {
    run_python(&p.source(completion), TIME_LIMIT).unwrap_or(false)
}

fn run_python(source: &str, limit: Duration) -> std::io::Result<bool> {
    let dir = Scratch::new()?;
    let file = dir.0.join("program.py");
    std::fs::write(&file, source)?;
    let mut child = Command::new("python3")
        .arg(&file)
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `python3` can be started here (tests that need it say so when it cannot).
pub fn python_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_passes_and_wrong_or_slow_fails() {
        assert!(
            python_available(),
            "pass@1 runs programs with python3, which was not found on PATH"
        );
        let p = Program {
            prompt: "def add(a, b):\n".into(),
            suffix: "".into(),
            canonical_solution: "    return a + b\n".into(),
            test: "def check(f):\n    assert f(2, 3) == 5\n".into(),
            entry_point: "add".into(),
        };
        assert!(passes(&p, &p.canonical_solution));
        assert!(!passes(&p, "    return a - b\n"));
        assert!(!passes(&p, "    return (\n"));
        let slow = "import time\ntime.sleep(5)\n";
        assert!(!run_python(slow, Duration::from_millis(300)).unwrap());
    }
}
