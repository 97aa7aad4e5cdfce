//! The library's error type. Every variant names the file, tensor or input it is about and, where
//! one exists, a hint of what to do; the binary prints the chain once and exits non-zero.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint file that cannot be read: corrupt, truncated, missing or mis-shaped tensors.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    /// A GGUF file that cannot be imported.
    #[error("GGUF {path}: {msg}")]
    Gguf { path: PathBuf, msg: String },

    /// A model configuration this code cannot serve, or an invalid one.
    #[error("config {path}: {msg}")]
    Config { path: PathBuf, msg: String },

    /// A corpus file that cannot be read as documents: bad JSON, a missing field, a bad
    /// Parquet column. `path` carries `:line` (or `:element`) where one is known.
    #[error("data {path}: {msg}")]
    Data { path: PathBuf, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Bad user input: token ids out of vocabulary, prompts longer than the canvas, bad requests.
    #[error("{0}")]
    Input(String),

    /// A failed or misconfigured multi-process run (launcher, communicator, world size).
    #[error("distributed: {0}")]
    Distributed(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    pub fn gguf(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Gguf {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    pub fn data(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Data {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    pub fn config(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}
