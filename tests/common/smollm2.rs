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

/// The largest difference of the last-position logits from the fixture's f32 ones, over the
/// prompts.
pub fn last_logit_diff(m: &dyn dlm::model::LanguageModel) -> f32 {
    let golden = super::golden("smollm2-135m");
    let mut worst = 0f32;
    for (i, (ids, _)) in prompts().iter().enumerate() {
        let x = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let h = m
            .hidden(&x, &dlm::ops::AttentionMask::Causal, None)
            .unwrap();
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
