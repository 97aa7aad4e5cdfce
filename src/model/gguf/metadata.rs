//! Typed reads of a GGUF file's metadata; each error names the file and the key.

use super::reader::GgufFile;
use super::value::GgufValue;
use crate::error::Result;

impl GgufFile {
    /// A string value; None when the key is absent or holds something else.
    pub fn str_value(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    pub fn required_str(&self, key: &str) -> Result<&str> {
        self.str_value(key)
            .ok_or_else(|| self.err(format!("{key} is missing or not a string")))
    }

    /// A non-negative integer of any width, when the key is present.
    pub fn usize_value(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|x| usize::try_from(x).ok()) {
                Some(x) => Ok(Some(x)),
                None => Err(self.err(format!(
                    "metadata {key} = {v:?} is not a non-negative integer"
                ))),
            },
        }
    }

    pub fn required_usize(&self, key: &str) -> Result<usize> {
        self.usize_value(key)?
            .ok_or_else(|| self.err(format!("metadata {key} is missing")))
    }

    /// A finite float, when the key is present.
    pub fn f64_value(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.err(format!("metadata {key} = {v:?} is not a finite float"))),
            },
        }
    }

    pub fn array(&self, key: &str) -> Result<&[GgufValue]> {
        self.get(key)
            .and_then(GgufValue::as_array)
            .ok_or_else(|| self.err(format!("{key} is missing or not an array")))
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.array(key)?
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.err(format!("{key} holds non-strings")))
    }
}
