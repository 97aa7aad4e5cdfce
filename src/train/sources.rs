//! Where a run's examples come from: packed blocks of a corpus for pre-training and adaptation
//! (§1.6), prompt/response pairs for SFT (§1.7), each with its validation source.

use std::path::PathBuf;

use crate::data::corpus::{Corpus, CorpusOptions, Fields};
use crate::data::packing::{DocSplit, PackedSource, Part, ValSplit};
use crate::data::sft::{SftFormat, SftSource};
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::model::{Architecture, ModelConfig};

use super::trainer::RunConfig;

/// A run's (train, validation) example sources.
pub type Sources<S> = (S, Option<S>);

/// The id GPT-2's vocabulary gives `======`, the SFT separator of DiffuGPT.
const GPT2_SEP: u32 = 50155;

/// Train and validation sources over packed blocks of a corpus (§1.6), documents separated by
/// [`eos_id`]: validation on `run.val_data` where given, else on a `val_fraction` of the
/// documents (none if 0).
pub fn packed_sources(
    run: &RunConfig,
    config: &ModelConfig,
    tokenizer: &Tokenizer,
    options: CorpusOptions,
    val_fraction: f64,
) -> Result<Sources<PackedSource>> {
    let eos = eos_id(config, tokenizer)?;
    let corpus = Corpus::open(&run.data, options.clone())?;
    let packed = |corpus: Corpus, split: DocSplit, part: Part| {
        PackedSource::new(corpus, tokenizer.clone(), run.seq_len, eos, split, part)
    };
    let whole = DocSplit {
        seed: run.seed,
        val: ValSplit::None,
    };
    if !run.val_data.is_empty() {
        let val = packed(Corpus::open(&run.val_data, options)?, whole, Part::Train)?;
        return Ok((packed(corpus, whole, Part::Train)?, Some(val)));
    }
    if val_fraction <= 0.0 {
        return Ok((packed(corpus, whole, Part::Train)?, None));
    }
    let split = DocSplit {
        seed: run.seed,
        val: ValSplit::Fraction(val_fraction),
    };
    let train = packed(corpus.clone(), split, Part::Train)?;
    Ok((train, Some(packed(corpus, split, Part::Val)?)))
}

/// The document separator for packing: the model's EOS, or `<|endoftext|>`.
pub fn eos_id(config: &ModelConfig, tokenizer: &Tokenizer) -> Result<u32> {
    config
        .eos_token_id
        .or_else(|| tokenizer.token_to_id("<|endoftext|>"))
        .ok_or_else(|| {
            Error::Input(
                "the model has no eos_token_id and the tokenizer no <|endoftext|>: cannot \
                 separate documents"
                    .into(),
            )
        })
}

/// BOS/SEP/EOS/pad for prompts of the §1.7 layout, from the model's config. The separator is
/// `sep` where given, else the config's `sep_token_id`, GPT-2's `======` for a GPT-2 vocabulary,
/// else EOS.
pub fn sft_format(config: &ModelConfig, sep: Option<u32>, cutoff_len: usize) -> Result<SftFormat> {
    let eos = config
        .eos_token_id
        .ok_or_else(|| Error::Input("the model has no eos_token_id; SFT needs one".into()))?;
    let sep = sep
        .or_else(|| {
            config
                .raw
                .get("sep_token_id")
                .and_then(|v| v.as_u64())
                .map(|v| v as u32)
        })
        .or_else(|| {
            (config.arch == Architecture::Gpt2 && config.vocab_size >= 50257).then_some(GPT2_SEP)
        })
        .unwrap_or(eos);
    Ok(SftFormat {
        bos: config.bos_token_id.unwrap_or(eos),
        sep,
        eos,
        pad: config.pad_token_id.unwrap_or(eos),
        cutoff_len,
    })
}

/// SFT examples from files of prompt/response pairs.
pub fn sft_source(paths: &[PathBuf], tokenizer: &Tokenizer, f: SftFormat) -> Result<SftSource> {
    let corpus = Corpus::open(
        paths,
        CorpusOptions {
            fields: Fields::pair(),
            line_docs: false,
        },
    )?;
    SftSource::new(corpus, tokenizer.clone(), f)
}

/// SFT sources: `run.data` to train on, the held-out pairs of `run.val_data` (if any) to
/// validate on.
pub fn sft_sources(
    run: &RunConfig,
    config: &ModelConfig,
    tokenizer: &Tokenizer,
    sep: Option<u32>,
) -> Result<Sources<SftSource>> {
    let f = sft_format(config, sep, run.seq_len)?;
    let val = (!run.val_data.is_empty())
        .then(|| sft_source(&run.val_data, tokenizer, f))
        .transpose()?;
    Ok((sft_source(&run.data, tokenizer, f)?, val))
}
