//! Byte-level BPE training with the `tokenizers` crate's trainer, for models trained from scratch
//! (e.g. the "Random" column of the paper's GSM8K ablation, reference-semantics §3.7 Table 3).
//! The result follows the same conventions as [`Tokenizer::from_bpe_parts`]: GPT-2 regex,
//! no prefix space, byte-level decoder, all 256 bytes in the vocabulary so any text encodes.

use std::sync::mpsc;

use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use super::corpus::{Corpus, CorpusStats, Document};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// The byte alphabet every byte-level BPE vocabulary starts with.
const BYTE_ALPHABET: usize = 256;

/// Trains on every document of `corpus` (prompt and response both count for pairs). Special
/// tokens get the first ids, in the order given. Returns the corpus counts too, so a caller can
/// report skipped lines.
pub fn train_bpe(
    corpus: &Corpus,
    vocab_size: usize,
    special_tokens: &[String],
) -> Result<(Tokenizer, CorpusStats)> {
    // The trainer wants a `Send` iterator; corpus readers are not `Send` (Parquet), so the
    // corpus is read on its own thread and the texts cross over a bounded channel. That also
    // overlaps decompression with pre-tokenisation.
    let (tx, rx) = mpsc::sync_channel::<String>(1024);
    let reader_corpus = corpus.clone();
    let reader = std::thread::spawn(move || -> Result<CorpusStats> {
        let mut docs = reader_corpus.documents();
        for doc in docs.by_ref() {
            let texts = match doc? {
                Document::Text(t) => vec![t],
                Document::Pair { prompt, response } => vec![prompt, response],
            };
            for t in texts {
                if tx.send(t).is_err() {
                    // The trainer stopped early (it failed); its error is reported instead.
                    return Ok(docs.stats().clone());
                }
            }
        }
        Ok(docs.stats().clone())
    });
    let trained = train_bpe_texts(rx.into_iter(), vocab_size, special_tokens);
    let stats = reader
        .join()
        .map_err(|_| Error::Input("the corpus reader thread panicked".into()))??;
    Ok((trained?, stats))
}

/// Trains on texts from any `Send` iterator.
pub fn train_bpe_texts<I>(
    texts: I,
    vocab_size: usize,
    special_tokens: &[String],
) -> Result<Tokenizer>
where
    I: Iterator<Item = String> + Send,
{
    let min_vocab = BYTE_ALPHABET + special_tokens.len();
    if vocab_size < min_vocab {
        return Err(Error::Input(format!(
            "vocab size {vocab_size} is below the {BYTE_ALPHABET} byte tokens plus {} special \
             tokens",
            special_tokens.len()
        )));
    }
    if let Some(empty) = special_tokens.iter().position(String::is_empty) {
        return Err(Error::Input(format!("special token {empty} is empty")));
    }
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .show_progress(false)
        .special_tokens(
            special_tokens
                .iter()
                .map(|t| AddedToken::from(t.clone(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();

    // Same pipeline as `Tokenizer::from_bpe_parts`, so a trained tokenizer behaves like GPT-2's.
    let mut inner = tokenizers::Tokenizer::new(BPE::default());
    inner.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
    inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    inner.with_post_processor(Some(ByteLevel::new(false, false, true)));
    inner
        .train(&mut trainer, texts)
        .map_err(|e| Error::Tokenizer(format!("training BPE: {e}")))?;
    Ok(Tokenizer::from(inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_texts() -> Vec<String> {
        let line = "the cat sat on the mat; the dog sat on the log. 12 + 30 = 42\n";
        vec![line.repeat(20), "naïve café — ünïcödé ✓".to_string()]
    }

    #[test]
    fn trains_round_trips_and_places_special_tokens_first() {
        let special = vec!["<|endoftext|>".to_string(), "[MASK]".to_string()];
        let tok = train_bpe_texts(corpus_texts().into_iter(), 300, &special).unwrap();
        assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
        assert_eq!(tok.token_to_id("[MASK]"), Some(1));
        assert!(tok.vocab_size() <= 300 && tok.vocab_size() > 258);
        // Bytes never seen in training still encode (byte-level alphabet).
        let text = "the cat<|endoftext|>日本 \u{1F600}";
        let ids = tok.encode(text).unwrap();
        assert!(ids.contains(&0));
        assert_eq!(tok.decode(&ids).unwrap(), text);
        // Merges were learned: "the" is shorter than its bytes.
        assert!(tok.encode(" the").unwrap().len() < 4);
    }

    #[test]
    fn too_small_vocab_and_empty_special_are_refused() {
        assert!(train_bpe_texts(corpus_texts().into_iter(), 100, &[]).is_err());
        assert!(train_bpe_texts(corpus_texts().into_iter(), 300, &[String::new()]).is_err());
    }
}
