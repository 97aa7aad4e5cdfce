//! Machine-readable logs: one JSON object per line, appended and flushed line by line so a
//! killed run keeps every line it wrote.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

pub struct JsonlLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl JsonlLog {
    pub fn append(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn write(&self, value: &serde_json::Value) -> Result<()> {
        let line = format!("{value}\n");
        let mut f = self
            .file
            .lock()
            .map_err(|_| Error::Input("log file lock poisoned".into()))?;
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Every line of a log, parsed; unparsable lines (a torn last line) are skipped.
    pub fn read(path: &Path) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}
