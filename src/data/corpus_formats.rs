//! Line-based and JSON corpus formats (reference-semantics §1.6 / §1.7 input): plain text, JSONL,
//! and JSON lists of objects (C4 and LLaMA-Factory datasets use both JSON shapes). A JSON list
//! is streamed element by element so a multi-gigabyte list never sits in memory.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::corpus::{CorpusStats, DocSource, Document, Fields};
use crate::error::{Error, Result};

/// Opens a `.json` file: a list if its first non-blank byte is `[`, JSONL otherwise.
pub(crate) fn open_json(
    path: PathBuf,
    mut reader: Box<dyn BufRead>,
    fields: Fields,
) -> Result<Box<dyn DocSource>> {
    if peek_non_ws(&path, reader.as_mut())? == Some(b'[') {
        reader.consume(1);
        Ok(Box::new(JsonListSource {
            path,
            reader,
            fields,
            element: 0,
            finished: false,
        }))
    } else {
        Ok(Box::new(JsonlSource::new(path, reader, fields)))
    }
}

/// Skips whitespace and returns the next byte without consuming it.
fn peek_non_ws(path: &Path, r: &mut dyn BufRead) -> Result<Option<u8>> {
    loop {
        let buf = r.fill_buf().map_err(|e| Error::io(path, e))?;
        let Some(&b) = buf.first() else {
            return Ok(None);
        };
        if b.is_ascii_whitespace() {
            r.consume(1);
        } else {
            return Ok(Some(b));
        }
    }
}

struct JsonListSource {
    path: PathBuf,
    reader: Box<dyn BufRead>,
    fields: Fields,
    element: u64,
    finished: bool,
}

impl JsonListSource {
    fn at(&self) -> PathBuf {
        PathBuf::from(format!(
            "{} (list element {})",
            self.path.display(),
            self.element
        ))
    }
}

impl DocSource for JsonListSource {
    fn next_doc(&mut self, _stats: &mut CorpusStats) -> Result<Option<Document>> {
        if self.finished {
            return Ok(None);
        }
        // Between elements: `]` ends the list, `,` precedes every element but the first.
        match peek_non_ws(&self.path, self.reader.as_mut())? {
            Some(b']') => {
                self.finished = true;
                return Ok(None);
            }
            Some(b',') if self.element > 0 => self.reader.consume(1),
            Some(_) if self.element == 0 => {}
            Some(b) => {
                return Err(Error::data(
                    self.at(),
                    format!("expected ',' or ']' but found {:?}", b as char),
                ))
            }
            None => {
                return Err(Error::data(
                    self.at(),
                    "the JSON list is not closed with ']'",
                ))
            }
        }
        // serde_json reads exactly one object from the stream: an object ends at its `}`, so
        // no byte after it is consumed and the separator is still there for the next call.
        let mut de = serde_json::Deserializer::from_reader(self.reader.as_mut());
        let value = Value::deserialize(&mut de)
            .map_err(|e| Error::data(self.at(), format!("malformed JSON: {e}")))?;
        let doc =
            record_to_document(&value, &self.fields).map_err(|m| Error::data(self.at(), m))?;
        self.element += 1;
        Ok(Some(doc))
    }
}

/// Reads one line as bytes into `buf` (newline stripped). `Ok(false)` at end of file.
fn read_line(path: &Path, r: &mut dyn BufRead, buf: &mut Vec<u8>) -> Result<bool> {
    buf.clear();
    let n = r.read_until(b'\n', buf).map_err(|e| Error::io(path, e))?;
    while buf.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        buf.pop();
    }
    Ok(n > 0)
}

pub(crate) struct TextSource {
    path: PathBuf,
    reader: Box<dyn BufRead>,
    line_docs: bool,
    finished: bool,
}

impl TextSource {
    pub(crate) fn new(path: PathBuf, reader: Box<dyn BufRead>, line_docs: bool) -> Self {
        Self {
            path,
            reader,
            line_docs,
            finished: false,
        }
    }
}

impl DocSource for TextSource {
    fn next_doc(&mut self, stats: &mut CorpusStats) -> Result<Option<Document>> {
        let mut doc = String::new();
        let mut buf = Vec::new();
        while !self.finished {
            if !read_line(&self.path, self.reader.as_mut(), &mut buf)? {
                self.finished = true;
                break;
            }
            let Ok(line) = std::str::from_utf8(&buf) else {
                stats.skipped_non_utf8_lines += 1;
                continue;
            };
            if self.line_docs {
                if !line.trim().is_empty() {
                    return Ok(Some(Document::Text(line.to_owned())));
                }
            } else {
                if !doc.is_empty() {
                    doc.push('\n');
                }
                doc.push_str(line);
            }
        }
        // A whole-file document that is blank is no document at all.
        let keep = !self.line_docs && !doc.trim().is_empty();
        Ok(keep.then_some(Document::Text(doc)))
    }
}

pub(crate) struct JsonlSource {
    path: PathBuf,
    reader: Box<dyn BufRead>,
    fields: Fields,
    line: u64,
}

impl JsonlSource {
    pub(crate) fn new(path: PathBuf, reader: Box<dyn BufRead>, fields: Fields) -> Self {
        Self {
            path,
            reader,
            fields,
            line: 0,
        }
    }
}

impl DocSource for JsonlSource {
    fn next_doc(&mut self, stats: &mut CorpusStats) -> Result<Option<Document>> {
        let mut buf = Vec::new();
        loop {
            if !read_line(&self.path, self.reader.as_mut(), &mut buf)? {
                return Ok(None);
            }
            self.line += 1;
            let Ok(line) = std::str::from_utf8(&buf) else {
                stats.skipped_non_utf8_lines += 1;
                continue;
            };
            if line.trim().is_empty() {
                continue;
            }
            let at = || PathBuf::from(format!("{}:{}", self.path.display(), self.line));
            let value: Value = serde_json::from_str(line)
                .map_err(|e| Error::data(at(), format!("malformed JSON: {e}")))?;
            return record_to_document(&value, &self.fields)
                .map(Some)
                .map_err(|m| Error::data(at(), m));
        }
    }
}

/// Pulls the configured string fields out of one JSON object.
pub(crate) fn record_to_document(
    value: &Value,
    fields: &Fields,
) -> std::result::Result<Document, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| "record is not a JSON object".to_string())?;
    let values = fields
        .names()
        .into_iter()
        .map(|name| match obj.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("field {name:?} is not a string")),
            None => Err(format!("missing field {name:?}")),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(fields.document(values))
}
