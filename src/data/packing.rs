//! Sequence packing for adaptation pre-training, reference-semantics §1.6 (LLaMA-Factory
//! `processors/pretrain.py`, stage `ddm`, `packing: true`; DiffuLLaMA `packed_dataset.py`).
//!
//! Each document becomes `tokens + [eos]`, tokenised without special tokens and without BOS; all
//! documents are concatenated and cut into blocks of `block_len` tokens. The remainder is
//! dropped and a document longer than a block simply continues into the next one. DiffuGPT uses
//! `block_len = cutoff_len = 1024`; DiffuLLaMA reads `seq_len + 1 = 2049` so that 2048 positions
//! carry loss after the shift (§1.3). Packed blocks have `src_mask` all zeros.
//!
//! The validation split is by document, before packing, so no document straddles train and
//! validation.

use serde::{Deserialize, Serialize};

use super::corpus::{Corpus, Document, Documents};
use super::loader::{Example, ExampleSource};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// Concatenates documents and cuts full blocks off the front.
#[derive(Debug, Clone)]
pub struct Packer {
    block_len: usize,
    eos: u32,
    pending: Vec<u32>,
}

impl Packer {
    pub fn new(block_len: usize, eos: u32) -> Result<Self> {
        if block_len == 0 {
            return Err(Error::Input("block length must be at least 1".into()));
        }
        Ok(Self {
            block_len,
            eos,
            pending: Vec::new(),
        })
    }

    /// Appends `tokens + [eos]`.
    pub fn push_document(&mut self, tokens: &[u32]) {
        self.pending.extend_from_slice(tokens);
        self.pending.push(self.eos);
    }

    /// The next full block, if enough tokens are pending.
    pub fn pop_block(&mut self) -> Option<Vec<u32>> {
        if self.pending.len() < self.block_len {
            return None;
        }
        let rest = self.pending.split_off(self.block_len);
        Some(std::mem::replace(&mut self.pending, rest))
    }

    /// Tokens waiting for a block; whatever is left at the end of the corpus is dropped.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Packs already-tokenised documents in memory.
pub fn pack_documents(docs: &[Vec<u32>], block_len: usize, eos: u32) -> Result<Vec<Vec<u32>>> {
    let mut packer = Packer::new(block_len, eos)?;
    let mut blocks = Vec::new();
    for doc in docs {
        packer.push_document(doc);
        blocks.extend(std::iter::from_fn(|| packer.pop_block()));
    }
    Ok(blocks)
}

/// How many documents are held out for validation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ValSplit {
    None,
    /// Each document independently, with this probability, decided by a hash of
    /// (seed, document index): deterministic, streaming, and independent of file boundaries.
    Fraction(f64),
    /// The first `n` documents in corpus order (deterministic; not seeded).
    Count(u64),
}

/// Train / validation membership of each document, by its index in the corpus stream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DocSplit {
    pub seed: u64,
    pub val: ValSplit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    Train,
    Val,
}

impl DocSplit {
    pub fn is_val(&self, doc_index: u64) -> bool {
        match self.val {
            ValSplit::None => false,
            ValSplit::Fraction(f) => {
                // 53 hash bits as a uniform in [0, 1), like Rng::uniform_f64.
                let h = splitmix64(self.seed ^ splitmix64(doc_index));
                ((h >> 11) as f64 / (1u64 << 53) as f64) < f
            }
            ValSplit::Count(n) => doc_index < n,
        }
    }

    pub fn part(&self, doc_index: u64) -> Part {
        if self.is_val(doc_index) {
            Part::Val
        } else {
            Part::Train
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Corpus → tokens → packed blocks, streamed; one pass per `rewind`.
pub struct PackedSource {
    corpus: Corpus,
    tokenizer: Tokenizer,
    split: DocSplit,
    part: Part,
    block_len: usize,
    eos: u32,
    docs: Documents,
    doc_index: u64,
    packer: Packer,
}

impl PackedSource {
    pub fn new(
        corpus: Corpus,
        tokenizer: Tokenizer,
        block_len: usize,
        eos: u32,
        split: DocSplit,
        part: Part,
    ) -> Result<Self> {
        let docs = corpus.documents();
        Ok(Self {
            packer: Packer::new(block_len, eos)?,
            corpus,
            tokenizer,
            split,
            part,
            block_len,
            eos,
            docs,
            doc_index: 0,
        })
    }

    /// Counts of the current pass (documents read, non-UTF-8 lines skipped).
    pub fn corpus_stats(&self) -> &super::corpus::CorpusStats {
        self.docs.stats()
    }

    fn next_block(&mut self) -> Result<Option<Vec<u32>>> {
        loop {
            if let Some(block) = self.packer.pop_block() {
                return Ok(Some(block));
            }
            let Some(doc) = self.docs.next().transpose()? else {
                return Ok(None); // the remainder in the packer is dropped (§1.6)
            };
            let index = self.doc_index;
            self.doc_index += 1;
            if self.split.part(index) != self.part {
                continue;
            }
            let Document::Text(text) = doc else {
                return Err(Error::Input(
                    "packing needs text documents but the corpus yields prompt/response pairs; \
                     use the SFT format for those"
                        .into(),
                ));
            };
            self.packer.push_document(&self.tokenizer.encode(&text)?);
        }
    }
}

impl ExampleSource for PackedSource {
    fn rewind(&mut self) -> Result<()> {
        self.docs = self.corpus.documents();
        self.doc_index = 0;
        self.packer = Packer::new(self.block_len, self.eos)?;
        Ok(())
    }

    fn next_example(&mut self) -> Result<Option<Example>> {
        Ok(self.next_block()?.map(|ids| Example {
            src_mask: vec![0; ids.len()],
            ids,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_get_eos_blocks_are_cut_and_remainder_dropped() {
        let docs = vec![vec![1, 2, 3], vec![4], vec![5, 6, 7, 8, 9]];
        // Stream: 1 2 3 E 4 E 5 6 7 8 9 E (12 tokens) → three blocks of 4, nothing left over.
        let blocks = pack_documents(&docs, 4, 0).unwrap();
        assert_eq!(
            blocks,
            vec![vec![1, 2, 3, 0], vec![4, 0, 5, 6], vec![7, 8, 9, 0]]
        );
        // Blocks of 5: two full blocks, the last two tokens are dropped.
        let blocks = pack_documents(&docs, 5, 0).unwrap();
        assert_eq!(blocks, vec![vec![1, 2, 3, 0, 4], vec![0, 5, 6, 7, 8]]);
    }

    #[test]
    fn long_document_is_split_across_blocks() {
        let doc: Vec<u32> = (1..=7).collect();
        let blocks = pack_documents(&[doc], 3, 99).unwrap();
        // 1..7 + [99] is 8 tokens: two blocks of 3, and `7 99` is the dropped remainder.
        assert_eq!(blocks, vec![vec![1, 2, 3], vec![4, 5, 6]]);
        assert!(Packer::new(0, 0).is_err());
    }

    #[test]
    fn split_is_deterministic_and_near_the_fraction() {
        let split = DocSplit {
            seed: 3,
            val: ValSplit::Fraction(0.1),
        };
        let val: Vec<u64> = (0..10_000).filter(|&i| split.is_val(i)).collect();
        let again: Vec<u64> = (0..10_000).filter(|&i| split.is_val(i)).collect();
        assert_eq!(val, again);
        assert!((900..1100).contains(&val.len()), "{}", val.len());
        let other = DocSplit { seed: 4, ..split };
        assert_ne!(
            val,
            (0..10_000).filter(|&i| other.is_val(i)).collect::<Vec<_>>()
        );
        let count = DocSplit {
            seed: 0,
            val: ValSplit::Count(2),
        };
        assert_eq!(count.part(1), Part::Val);
        assert_eq!(count.part(2), Part::Train);
    }
}
