//! One task's result as written to the results JSON, and the table printed at the end.

use std::collections::BTreeMap;

use serde::Serialize;

use super::metrics::{mean_stderr, MeanStderr};

/// The results JSON holds one of these per task (schema in the README, "dlm eval").
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub model: String,
    /// "dlm" or "ar".
    pub mode: String,
    /// reference | elbo | ar-sum | ar-mean (multiple choice); topk-confidence | greedy (generation).
    pub estimator: String,
    /// Denoising steps T: a number, or "hole" where T equals the hole length; null for AR.
    #[serde(rename = "T")]
    pub steps: serde_json::Value,
    /// ELBO samples per choice (elbo only).
    pub samples: Option<usize>,
    /// Prompt format of the multiple-choice tasks.
    pub format: Option<String>,
    pub seed: u64,
    /// Examples scored.
    pub n: usize,
    /// Records skipped as malformed (missing fields, bad labels) or too long for the model.
    pub skipped: usize,
    pub data: String,
    pub metrics: BTreeMap<String, MeanStderr>,
    pub wall_s: f64,
}

/// Per-example metric values, aggregated into mean ± stderr at the end.
#[derive(Debug, Default)]
pub struct MetricValues(BTreeMap<String, Vec<f64>>);

impl MetricValues {
    pub fn push(&mut self, name: &str, value: f64) {
        self.0.entry(name.to_string()).or_default().push(value);
    }

    pub fn summary(&self) -> BTreeMap<String, MeanStderr> {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), mean_stderr(v)))
            .collect()
    }
}

/// A fixed-width table: task, n, skipped, every metric as mean ± stderr, wall time.
pub fn table(results: &[TaskResult]) -> String {
    let mut out = format!(
        "{:<12} {:<16} {:>6} {:>7}  {:<48} {:>8}\n",
        "task", "estimator", "n", "skipped", "metrics (mean ± stderr)", "wall s"
    );
    for r in results {
        let metrics: Vec<String> = r
            .metrics
            .iter()
            .map(|(k, m)| {
                // Fractions print as percentages; ROUGE is already ×100.
                let scale = if k.starts_with("rouge") { 1.0 } else { 100.0 };
                format!("{k} {:.2} ± {:.2}", m.mean * scale, m.stderr * scale)
            })
            .collect();
        out.push_str(&format!(
            "{:<12} {:<16} {:>6} {:>7}  {:<48} {:>8.1}\n",
            r.task,
            r.estimator,
            r.n,
            r.skipped,
            metrics.join(", "),
            r.wall_s
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_aggregate_and_print() {
        let mut v = MetricValues::default();
        for x in [1.0, 0.0, 1.0, 1.0] {
            v.push("acc", x);
        }
        let s = v.summary();
        assert_eq!(s["acc"].mean, 0.75);
        let r = TaskResult {
            task: "piqa".into(),
            model: "m".into(),
            mode: "ar".into(),
            estimator: "ar-mean".into(),
            steps: serde_json::Value::Null,
            samples: None,
            format: Some("reference".into()),
            seed: 0,
            n: 4,
            skipped: 1,
            data: "x".into(),
            metrics: s,
            wall_s: 1.0,
        };
        assert!(table(std::slice::from_ref(&r)).contains("acc 75.00 ± 25.00"));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["metrics"]["acc"]["mean"], 0.75);
        assert!(j["T"].is_null());
    }
}
