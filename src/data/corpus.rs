//! Documents in, one at a time: the input side of reference-semantics §1.6 (pre-training text) and
//! §1.7 (prompt/response pairs). Knows nothing of tokens.
//!
//! Formats, chosen by extension after stripping `.gz` (gzip) or `.zst` (zstd):
//! * `.txt`, `.md` (or any unknown extension named explicitly): the whole file is **one
//!   document**, unless `line_docs` is set, when every non-blank line is one (e.g. a
//!   one-article-per-line Wikipedia dump).
//! * `.jsonl`, `.ndjson`: one JSON object per line. `.json`: a JSON list of objects if the first
//!   non-blank byte is `[`, else JSONL. Objects give `text` (or the configured field), or
//!   `prompt` + `response` for SFT.
//! * `.parquet` (FineWeb's format, feature `parquet`): a string column per field.
//!
//! Directories are walked recursively in sorted order, so the document order is deterministic;
//! inside a directory only the extensions above are read and hidden entries are skipped.
//! Everything is streamed: a corpus larger than memory is fine (one document, or one Parquet
//! row group, is in memory at a time).
//!
//! Bad input never panics. Lines that are not UTF-8 (text and JSONL) are skipped and counted
//! in [`CorpusStats`]; a malformed JSON record or a missing field is an error naming
//! `file:line` and the field, and ends the stream.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One record of the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Text(String),
    Pair { prompt: String, response: String },
}

/// Which fields of a JSON object or Parquet row make a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fields {
    Text { key: String },
    Pair { prompt: String, response: String },
}

impl Fields {
    /// `text`: pre-training corpora (C4, FineWeb).
    pub fn text() -> Self {
        Fields::Text { key: "text".into() }
    }

    /// `prompt` / `response`: SFT pairs.
    pub fn pair() -> Self {
        Fields::Pair {
            prompt: "prompt".into(),
            response: "response".into(),
        }
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        match self {
            Fields::Text { key } => vec![key],
            Fields::Pair { prompt, response } => vec![prompt, response],
        }
    }

    /// Builds the document from the field values, in `names()` order.
    pub(crate) fn document(&self, mut values: Vec<String>) -> Document {
        match (self, values.len()) {
            (Fields::Pair { .. }, 2) => {
                let response = values.pop().unwrap_or_default();
                let prompt = values.pop().unwrap_or_default();
                Document::Pair { prompt, response }
            }
            _ => Document::Text(values.pop().unwrap_or_default()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusOptions {
    pub fields: Fields,
    /// Plain text: one document per non-blank line instead of one per file.
    pub line_docs: bool,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        Self {
            fields: Fields::text(),
            line_docs: false,
        }
    }
}

/// Counts gathered while streaming, for the run log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorpusStats {
    pub files: usize,
    pub documents: u64,
    pub skipped_non_utf8_lines: u64,
}

/// The files of a corpus, resolved once; `documents()` streams them as often as needed (one
/// pass per epoch).
#[derive(Debug, Clone)]
pub struct Corpus {
    roots: Vec<PathBuf>,
    files: Vec<PathBuf>,
    options: CorpusOptions,
}

impl Corpus {
    /// Resolves `paths` (files or directories) to a sorted file list. Fails if a path does not
    /// exist or nothing readable is found.
    pub fn open(paths: &[PathBuf], options: CorpusOptions) -> Result<Self> {
        let mut files = Vec::new();
        for p in paths {
            let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
            if meta.is_dir() {
                walk(p, &mut files)?;
            } else {
                files.push(p.clone());
            }
        }
        if files.is_empty() {
            return Err(Error::Input(format!(
                "empty corpus: no .txt/.md/.json/.jsonl/.ndjson/.parquet files (optionally .gz or \
                 .zst) in {}",
                list_paths(paths)
            )));
        }
        Ok(Self {
            roots: paths.to_vec(),
            files,
            options,
        })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn options(&self) -> &CorpusOptions {
        &self.options
    }

    /// A fresh pass over every document, in file order.
    pub fn documents(&self) -> Documents {
        Documents {
            corpus: self.clone(),
            next_file: 0,
            current: None,
            stats: CorpusStats::default(),
            done: false,
        }
    }
}

fn list_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::io(dir, e))?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if classify(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    /// `.json`: a list or JSONL, decided by the first byte.
    Json,
    Jsonl,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Format and compression from the file name; `None` for names a directory walk should skip.
fn classify(path: &Path) -> Option<(Format, Compression)> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    let format = match stem.rsplit_once('.')?.1 {
        "txt" | "md" => Format::Text,
        "json" => Format::Json,
        "jsonl" | "ndjson" => Format::Jsonl,
        "parquet" => Format::Parquet,
        _ => return None,
    };
    Some((format, compression))
}

/// One open file yielding documents.
pub(crate) trait DocSource {
    fn next_doc(&mut self, stats: &mut CorpusStats) -> Result<Option<Document>>;
}

/// Streams documents; yields at most one error, after which it ends.
pub struct Documents {
    corpus: Corpus,
    next_file: usize,
    current: Option<Box<dyn DocSource>>,
    stats: CorpusStats,
    done: bool,
}

impl Documents {
    pub fn stats(&self) -> &CorpusStats {
        &self.stats
    }

    fn advance(&mut self) -> Result<Option<Document>> {
        loop {
            if let Some(src) = self.current.as_mut() {
                if let Some(doc) = src.next_doc(&mut self.stats)? {
                    return Ok(Some(doc));
                }
                self.current = None;
            }
            match self.open_next()? {
                Some(src) => self.current = Some(src),
                None => return Ok(None),
            }
        }
    }

    fn open_next(&mut self) -> Result<Option<Box<dyn DocSource>>> {
        let Some(path) = self.corpus.files.get(self.next_file).cloned() else {
            return Ok(None);
        };
        self.next_file += 1;
        self.stats.files += 1;
        // An explicitly named file with an unknown extension is read as plain text.
        let (format, compression) = classify(&path).unwrap_or((Format::Text, Compression::None));
        let opts = &self.corpus.options;
        if format == Format::Parquet {
            if compression != Compression::None {
                return Err(Error::data(
                    &path,
                    "compressed Parquet is not supported; Parquet compresses its pages itself",
                ));
            }
            return open_parquet(&path, &opts.fields);
        }
        let reader = open_reader(&path, compression)?;
        Ok(Some(match format {
            Format::Text => Box::new(super::corpus_formats::TextSource::new(
                path,
                reader,
                opts.line_docs,
            )),
            Format::Jsonl => Box::new(super::corpus_formats::JsonlSource::new(
                path,
                reader,
                opts.fields.clone(),
            )),
            _ => super::corpus_formats::open_json(path, reader, opts.fields.clone())?,
        }))
    }
}

impl Iterator for Documents {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(doc)) => {
                self.stats.documents += 1;
                Some(Ok(doc))
            }
            Ok(None) => {
                self.done = true;
                (self.stats.documents == 0).then(|| {
                    Err(Error::Input(format!(
                        "empty corpus: no documents in {}",
                        list_paths(&self.corpus.roots)
                    )))
                })
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn open_reader(path: &Path, compression: Compression) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let raw: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        // Multi-member: `cat a.gz b.gz` is a valid gzip stream, and common for sharded dumps.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(path, e))?)
        }
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, raw)))
}

#[cfg(feature = "parquet")]
fn open_parquet(path: &Path, fields: &Fields) -> Result<Option<Box<dyn DocSource>>> {
    let src = super::corpus_parquet::ParquetSource::open(path, fields)?;
    Ok(Some(Box::new(src)))
}

#[cfg(not(feature = "parquet"))]
fn open_parquet(path: &Path, _fields: &Fields) -> Result<Option<Box<dyn DocSource>>> {
    Err(Error::data(
        path,
        "this dlm was built without the `parquet` feature",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_compression_come_from_the_name() {
        let c = |n: &str| classify(Path::new(n));
        assert_eq!(c("a/b.txt"), Some((Format::Text, Compression::None)));
        assert_eq!(c("x.JSONL.GZ"), Some((Format::Jsonl, Compression::Gzip)));
        assert_eq!(c("x.json.zst"), Some((Format::Json, Compression::Zstd)));
        assert_eq!(
            c("train-0001.parquet"),
            Some((Format::Parquet, Compression::None))
        );
        // Unknown or missing extensions are skipped in directory walks.
        assert_eq!(c("model.safetensors"), None);
        assert_eq!(c("README"), None);
        assert_eq!(c("x.gz"), None);
    }

    #[test]
    fn pair_fields_build_pairs_in_order() {
        let doc = Fields::pair().document(vec!["p".into(), "r".into()]);
        let want = Document::Pair {
            prompt: "p".into(),
            response: "r".into(),
        };
        assert_eq!(doc, want);
        assert_eq!(Fields::text().names(), vec!["text"]);
    }
}
