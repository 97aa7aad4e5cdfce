//! Per-example metrics and their aggregation: accuracy, SQuAD-normalised exact match and token F1,
//! ROUGE-1/2/L F-measure as the `rouge-score` package computes it (the scorer behind HF
//! `evaluate.load("rouge")`, which the reference's ROCStories eval uses), and pass@1.

use std::collections::HashMap;

/// A mean over examples with its standard error (sample standard deviation / √n, as lm-eval).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MeanStderr {
    pub mean: f64,
    pub stderr: f64,
}

pub fn mean_stderr(values: &[f64]) -> MeanStderr {
    let n = values.len() as f64;
    if values.is_empty() {
        return MeanStderr {
            mean: f64::NAN,
            stderr: f64::NAN,
        };
    }
    let mean = values.iter().sum::<f64>() / n;
    let stderr = if values.len() < 2 {
        f64::NAN
    } else {
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (var / n).sqrt()
    };
    MeanStderr { mean, stderr }
}

/// SQuAD's `normalize_answer`: lower case, drop ASCII punctuation, drop the articles a/an/the,
/// collapse whitespace.
pub fn squad_normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exact match after normalisation.
pub fn exact_match(prediction: &str, gold: &str) -> bool {
    squad_normalize(prediction) == squad_normalize(gold)
}

/// The reference's TriviaQA check (`eval_triva`): the normalised gold is contained in the
/// normalised prediction.
pub fn contains_match(prediction: &str, gold: &str) -> bool {
    squad_normalize(prediction).contains(&squad_normalize(gold))
}

fn counts<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for x in items {
        *m.entry(x.clone()).or_insert(0) += 1;
    }
    m
}

/// Size of the multiset intersection.
fn overlap<T: std::hash::Hash + Eq + Clone>(a: &[T], b: &[T]) -> usize {
    let cb = counts(b);
    counts(a)
        .iter()
        .map(|(k, &n)| n.min(cb.get(k).copied().unwrap_or(0)))
        .sum()
}

fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// SQuAD token F1 over normalised whitespace tokens (1 when both are empty).
pub fn token_f1(prediction: &str, gold: &str) -> f64 {
    let p = squad_normalize(prediction);
    let g = squad_normalize(gold);
    let p: Vec<&str> = p.split_whitespace().collect();
    let g: Vec<&str> = g.split_whitespace().collect();
    if p.is_empty() || g.is_empty() {
        return f64::from(u8::from(p == g));
    }
    let same = overlap(&p, &g) as f64;
    fmeasure(same / p.len() as f64, same / g.len() as f64)
}

/// `rouge-score`'s default tokeniser: lower case, every run of characters outside [a-z0-9] is a
/// separator (no stemming, as `evaluate`'s default).
pub fn rouge_tokens(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// ROUGE-1, ROUGE-2 and ROUGE-L F-measures of one prediction against one reference, in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rouge {
    pub rouge1: f64,
    pub rouge2: f64,
    pub rouge_l: f64,
}

pub fn rouge(prediction: &str, reference: &str) -> Rouge {
    let p = rouge_tokens(prediction);
    let r = rouge_tokens(reference);
    Rouge {
        rouge1: rouge_n(&p, &r, 1),
        rouge2: rouge_n(&p, &r, 2),
        rouge_l: rouge_lcs(&p, &r),
    }
}

fn rouge_n(p: &[String], r: &[String], n: usize) -> f64 {
    let grams = |t: &[String]| -> Vec<Vec<String>> { t.windows(n).map(|w| w.to_vec()).collect() };
    let (pg, rg) = (grams(p), grams(r));
    let hit = overlap(&pg, &rg) as f64;
    fmeasure(hit / pg.len().max(1) as f64, hit / rg.len().max(1) as f64)
}

fn rouge_lcs(p: &[String], r: &[String]) -> f64 {
    if p.is_empty() || r.is_empty() {
        return 0.0;
    }
    // One row of the LCS table at a time.
    let mut prev = vec![0usize; p.len() + 1];
    for rt in r {
        let mut cur = vec![0usize; p.len() + 1];
        for (j, pt) in p.iter().enumerate() {
            cur[j + 1] = if rt == pt {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        prev = cur;
    }
    let lcs = prev[p.len()] as f64;
    fmeasure(lcs / p.len() as f64, lcs / r.len() as f64)
}

/// The number after the last `####`, commas removed (the reference's `gsm_eval` comparison key).
pub fn gsm_answer(text: &str) -> Option<String> {
    let (_, after) = text.rsplit_once("####")?;
    let a: String = after.trim().replace(',', "");
    let a = a.split_whitespace().next().unwrap_or("").to_string();
    (!a.is_empty()).then_some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values computed once with `rouge-score` 0.1.2:
    /// `RougeScorer(["rouge1","rouge2","rougeL"]).score(reference, prediction)[k].fmeasure`.
    #[test]
    fn rouge_matches_rouge_score() {
        let cases: [(&str, &str, [f64; 3]); 6] = [
            (
                "the cat sat on the mat",
                "the cat was sitting on the mat",
                [0.7692307692307692, 0.5454545454545454, 0.7692307692307692],
            ),
            (
                "He went to the store, and bought milk!",
                "He bought milk at the store.",
                [0.7142857142857143, 0.3333333333333333, 0.42857142857142855],
            ),
            (
                "Tom's dog barked at 3 AM.",
                "At 3am the dog barked loudly",
                [0.4615384615384615, 0.1818181818181818, 0.30769230769230765],
            ),
            (
                "completely different words",
                "nothing shared here",
                [0.0; 3],
            ),
            ("", "a reference", [0.0; 3]),
            (
                "She decided to bake a cake for her friend's birthday.",
                "She decided to bake a cake.",
                [0.7058823529411764, 0.6666666666666666, 0.7058823529411764],
            ),
        ];
        for (reference, prediction, want) in cases {
            let r = rouge(prediction, reference);
            for (got, want) in [r.rouge1, r.rouge2, r.rouge_l].iter().zip(want) {
                assert!(
                    (got - want).abs() < 1e-12,
                    "{prediction:?}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn squad_normalisation_em_and_f1() {
        assert_eq!(squad_normalize("The  Eiffel-Tower!"), "eiffeltower");
        assert!(exact_match("an Apple.", "apple"));
        assert!(contains_match("It was Paris, France", "paris"));
        // "big red dog" vs "red dog house": 2 shared of 3 and 3
        assert!((token_f1("the big red dog", "red dog house") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("x", ""), 0.0);
    }

    #[test]
    fn stderr_and_gsm() {
        let m = mean_stderr(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(m.mean, 0.5);
        // sample sd = sqrt(1/3), / sqrt(4)
        assert!((m.stderr - (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
        assert_eq!(gsm_answer("<<2*3=6>> #### 1,234").as_deref(), Some("1234"));
        assert_eq!(gsm_answer("no answer"), None);
    }
}
