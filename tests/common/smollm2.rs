//! SmolLM2 checks shared by the kept-quantised tests: the fixture's prompts, last-logit
//! differences and greedy agreement of any model against the fixture's f32 values.

use candle_core::{Device, Tensor};

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The fixture's prompts: (ids, 20-token greedy continuation of the f32 model).
pub fn prompts() -> Vec<(Vec<u32>, Vec<u32>)> {
    let g = super::golden_json("smollm2-135m");
    g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (ids(&p["prompt_ids"]), ids(&p["greedy_ids"])))
        .collect()
}

/// The final hidden states of one causal forward over `ids`, `[1, len, d]`.
fn causal_hidden(m: &dyn dlm::model::LanguageModel, ids: &[u32]) -> Tensor {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.hidden(&x, &dlm::ops::AttentionMask::Causal, None)
        .unwrap()
}

/// The largest difference of the last-position logits from the fixture's f32 ones, over the
/// prompts.
pub fn last_logit_diff(m: &dyn dlm::model::LanguageModel) -> f32 {
    let golden = super::golden("smollm2-135m");
    let mut worst = 0f32;
    for (i, (ids, _)) in prompts().iter().enumerate() {
        let h = causal_hidden(m, ids);
        let last = m.head(&h.narrow(1, ids.len() - 1, 1).unwrap()).unwrap();
        let want = golden["last_logits"].get(i).unwrap();
        worst = worst.max(super::max_abs_diff(&last.flatten_all().unwrap(), &want));
    }
    worst
}

/// Greedy continuations that equal the fixture's, and tokens that do (up to the first
/// difference), over the prompts.
pub fn greedy_agreement(m: &dyn dlm::model::LanguageModel) -> (usize, usize) {
    use dlm::sample::autoregressive::{generate, ArOptions};
    let opts = ArOptions {
        max_new_tokens: 20,
        choice: dlm::sample::filter::TokenChoice::Greedy,
        stop_ids: vec![],
    };
    let (mut same, mut tokens) = (0, 0);
    for (ids, want) in prompts() {
        let got = generate(
            m,
            &ids,
            &opts,
            &mut dlm::rng::Rng::seed(0),
            &Device::Cpu,
            |_| {},
        )
        .unwrap();
        same += usize::from(got == want);
        tokens += got.iter().zip(&want).take_while(|(a, b)| a == b).count();
    }
    (same, tokens)
}

/// Teacher-forced against the fixture's greedy continuations: the model reads prompt +
/// continuation in one causal forward and predicts each continuation token. Returns the tokens
/// it predicts as the fixture does (of 60) and, where it does not, the largest gap between its
/// top logit and the fixture token's: a near-tie flipped by rounding has a small gap, a wrong
/// model a large one. Free-running agreement (`greedy_agreement`) cannot tell the two apart,
/// since one flip changes every later token.
pub fn teacher_forced(m: &dyn dlm::model::LanguageModel) -> (usize, f32) {
    let (mut agree, mut worst_gap) = (0, 0f32);
    for (ids, want) in prompts() {
        let all: Vec<u32> = ids.iter().chain(&want).copied().collect();
        let h = causal_hidden(m, &all);
        let logits = m
            .head(&h.narrow(1, ids.len() - 1, want.len()).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row, &t) in logits.iter().zip(&want) {
            let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if row[t as usize] == top {
                agree += 1;
            } else {
                worst_gap = worst_gap.max(top - row[t as usize]);
            }
        }
    }
    (agree, worst_gap)
}
