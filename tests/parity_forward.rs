//! Forward parity with the PyTorch fixtures: logits under causal, bidirectional and annealed
//! attention for gpt2-tiny, llama-tiny and llama-tiny-tied (atol 1e-5, fixtures/README §4), and the
//! KV-cache path against the full causal forward.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use dlm::model::{load_dir, KvCache};
use dlm::ops::AttentionMask;

const ATOL: f32 = 1e-5;

#[test]
fn logits_match_under_all_three_masks() {
    for name in TINY {
        let g = golden(name);
        let m = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let ids = ids_u32(&g["input_ids"]);
        let causal = m.model.forward(&ids, &AttentionMask::Causal).unwrap();
        assert_close(
            &format!("{name} causal"),
            &causal,
            &g["logits_causal"],
            ATOL,
        );
        let bidi = m
            .model
            .forward(&ids, &AttentionMask::Bidirectional)
            .unwrap();
        assert_close(
            &format!("{name} bidirectional"),
            &bidi,
            &g["logits_bidirectional"],
            ATOL,
        );
        let matrix: Vec<i64> = g["anneal_matrix"].flatten_all().unwrap().to_vec1().unwrap();
        let l = g["anneal_matrix"].dim(0).unwrap();
        let allowed: Vec<bool> = (0..l * l)
            .map(|k| k % l <= k / l || matrix[k] == 1)
            .collect();
        let mask = AttentionMask::from_allowed(&allowed, l, &Device::Cpu).unwrap();
        let annealed = m.model.forward(&ids, &mask).unwrap();
        assert_close(
            &format!("{name} annealed"),
            &annealed,
            &g["logits_annealed"],
            ATOL,
        );
    }
}

#[test]
fn kv_cache_decoding_matches_full_causal_forward() {
    for name in TINY {
        let g = golden(name);
        let m = load_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let ids = ids_u32(&g["input_ids"]);
        let l = ids.dim(1).unwrap();
        let mut cache = KvCache::new(m.config.num_layers);
        // A 5-token prefix, then one token at a time.
        let mut rows = vec![m
            .model
            .hidden(
                &ids.narrow(1, 0, 5).unwrap(),
                &AttentionMask::Causal,
                Some(&mut cache),
            )
            .unwrap()];
        for i in 5..l {
            let step = ids.narrow(1, i, 1).unwrap();
            rows.push(
                m.model
                    .hidden(&step, &AttentionMask::Causal, Some(&mut cache))
                    .unwrap(),
            );
        }
        let logits = m.model.head(&Tensor::cat(&rows, 1).unwrap()).unwrap();
        assert_close(
            &format!("{name} kv-cache"),
            &logits,
            &g["logits_causal"],
            ATOL,
        );
    }
}

#[test]
fn out_of_vocabulary_ids_are_refused() {
    let m = load_dir(&fixture("llama-tiny"), DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 96]], &Device::Cpu).unwrap();
    let err = m
        .model
        .forward(&ids, &AttentionMask::Bidirectional)
        .unwrap_err();
    assert!(
        err.to_string().contains("token id 96 is out of vocabulary"),
        "{err}"
    );
}
