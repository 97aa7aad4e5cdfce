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

    /// A setting the library refuses: a sampler option, a training hyper-parameter. The message
    /// names the settings as the library does (`steps`, `block_length`); the CLI and the server
    /// each write them their own way (`--block-length`, `block_length`) through
    /// `OptionMessage::render`.
    #[error("{0}")]
    InvalidOption(OptionMessage),

    /// A broken invariant of dlm's own code: a bug, never the user's input.
    #[error("internal error (a bug in dlm): {0}")]
    Internal(String),

    /// A failed or misconfigured multi-process run (launcher, communicator, world size).
    #[error("distributed: {0}")]
    Distributed(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// A refused `setting`: `Error::option("steps", "must be at least 1")` reads
    /// "steps must be at least 1".
    pub fn option(setting: &'static str, rest: impl std::fmt::Display) -> Self {
        Error::InvalidOption(
            OptionMessage::default()
                .setting(setting)
                .text(format!(" {rest}")),
        )
    }

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

/// A message about settings, their names marked so that each front end can write them its own
/// way. Built in order: `OptionMessage::default().setting("threshold").text(" needs …")`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionMessage(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Setting(&'static str),
    Text(String),
}

impl OptionMessage {
    pub fn setting(mut self, name: &'static str) -> Self {
        self.0.push(Piece::Setting(name));
        self
    }

    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.0.push(Piece::Text(text.into()));
        self
    }

    /// The message with every setting written as `name` writes it.
    pub fn render(&self, name: impl Fn(&'static str) -> String) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Setting(s) => name(s),
                Piece::Text(t) => t.clone(),
            })
            .collect()
    }
}

/// The library's words: settings by their bare names.
impl std::fmt::Display for OptionMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render(str::to_string))
    }
}
