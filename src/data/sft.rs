//! SFT examples with a prompt and a response, reference-semantics §1.7 (DiffuSeq style;
//! LLaMA-Factory `processors/supervised.py`, `preprocess_partical_dataset`).
//!
//! `ids = [BOS] + src + [SEP] + tgt + [EOS]`, right-padded with `pad` to `cutoff_len`.
//! `src_mask = 1` on the first `len(src) + 2` positions (BOS, src, SEP) and 0 elsewhere,
//! *including the pads*: the response, EOS and trailing pads are all noised and trained on, which
//! is how the model learns to stop (emit pad after EOS).
//!
//! Truncation keeps at most `cutoff_len - 3` target tokens, then as much of the *tail* of src as
//! still fits. Quirk of the reference, not reproduced: it slices `src_ids[-(budget):]`, and
//! when the target fills the budget exactly (`budget = 0`) Python's `-0` keeps the whole source,
//! after which the final cut to `cutoff_len` drops the target instead. Here a zero budget keeps
//! no source, so the target always survives.

use serde::{Deserialize, Serialize};

use super::corpus::{Corpus, Document, Documents};
use super::loader::{Example, ExampleSource};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// Special ids and length of an SFT example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftFormat {
    pub bos: u32,
    pub sep: u32,
    pub eos: u32,
    pub pad: u32,
    pub cutoff_len: usize,
}

/// Lays out one example; `src` and `tgt` are token ids without special tokens.
pub fn sft_example(src: &[u32], tgt: &[u32], f: &SftFormat) -> Result<Example> {
    // BOS, SEP and EOS always take three positions.
    let budget = f.cutoff_len.checked_sub(3).ok_or_else(|| {
        Error::Input(format!(
            "SFT cutoff length {} leaves no room for BOS, SEP and EOS (needs at least 3)",
            f.cutoff_len
        ))
    })?;
    let tgt = &tgt[..tgt.len().min(budget)];
    let src_budget = budget - tgt.len();
    let src = &src[src.len().saturating_sub(src_budget)..];

    let mut ids = Vec::with_capacity(f.cutoff_len);
    ids.push(f.bos);
    ids.extend_from_slice(src);
    ids.push(f.sep);
    ids.extend_from_slice(tgt);
    ids.push(f.eos);
    ids.resize(f.cutoff_len, f.pad);

    let mut src_mask = vec![0u8; f.cutoff_len];
    src_mask[..src.len() + 2].fill(1);
    Ok(Example { ids, src_mask })
}

/// Corpus of prompt/response pairs → SFT examples, streamed; one pass per `rewind`.
pub struct SftSource {
    corpus: Corpus,
    tokenizer: Tokenizer,
    format: SftFormat,
    docs: Documents,
}

impl SftSource {
    pub fn new(corpus: Corpus, tokenizer: Tokenizer, format: SftFormat) -> Result<Self> {
        // Fail now rather than at the first example.
        sft_example(&[], &[], &format)?;
        Ok(Self {
            docs: corpus.documents(),
            corpus,
            tokenizer,
            format,
        })
    }
}

impl ExampleSource for SftSource {
    fn rewind(&mut self) -> Result<()> {
        self.docs = self.corpus.documents();
        Ok(())
    }

    fn next_example(&mut self) -> Result<Option<Example>> {
        let Some(doc) = self.docs.next().transpose()? else {
            return Ok(None);
        };
        let Document::Pair { prompt, response } = doc else {
            return Err(Error::Input(
                "SFT needs prompt/response pairs but the corpus yields plain text; read it with \
                 pair fields"
                    .into(),
            ));
        };
        let src = self.tokenizer.encode(&prompt)?;
        let tgt = self.tokenizer.encode(&response)?;
        sft_example(&src, &tgt, &self.format).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOS: u32 = 1;
    const SEP: u32 = 2;
    const EOS: u32 = 3;
    const PAD: u32 = 0;

    fn format(cutoff_len: usize) -> SftFormat {
        SftFormat {
            bos: BOS,
            sep: SEP,
            eos: EOS,
            pad: PAD,
            cutoff_len,
        }
    }

    #[test]
    fn layout_with_padding() {
        let ex = sft_example(&[10, 11], &[20, 21, 22], &format(10)).unwrap();
        assert_eq!(ex.ids, vec![BOS, 10, 11, SEP, 20, 21, 22, EOS, PAD, PAD]);
        // BOS, src, SEP are fixed; target, EOS and the pads are maskable.
        assert_eq!(ex.src_mask, vec![1, 1, 1, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn exact_fit_has_no_padding() {
        let ex = sft_example(&[10], &[20, 21], &format(6)).unwrap();
        assert_eq!(ex.ids, vec![BOS, 10, SEP, 20, 21, EOS]);
        assert_eq!(ex.src_mask, vec![1, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn truncation_keeps_target_then_the_tail_of_the_source() {
        // cutoff 8: budget 5; target (3) fits whole, source keeps its last 2 tokens.
        let ex = sft_example(&[10, 11, 12, 13], &[20, 21, 22], &format(8)).unwrap();
        assert_eq!(ex.ids, vec![BOS, 12, 13, SEP, 20, 21, 22, EOS]);
        assert_eq!(ex.src_mask, vec![1, 1, 1, 1, 0, 0, 0, 0]);
        // Target longer than the budget: it is cut to 5 tokens and no source remains.
        let ex = sft_example(&[10, 11], &[20, 21, 22, 23, 24, 25, 26], &format(8)).unwrap();
        assert_eq!(ex.ids, vec![BOS, SEP, 20, 21, 22, 23, 24, EOS]);
        assert_eq!(ex.src_mask, vec![1, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn empty_parts_and_too_short_cutoff() {
        let ex = sft_example(&[], &[], &format(4)).unwrap();
        assert_eq!(ex.ids, vec![BOS, SEP, EOS, PAD]);
        assert_eq!(ex.src_mask, vec![1, 1, 0, 0]);
        assert!(sft_example(&[], &[], &format(2)).is_err());
    }
}
