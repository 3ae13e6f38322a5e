//! The crate's error type: every failure names what was wrong and where.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `config.json` (or another model file) is missing, malformed or holds a value we do not
    /// support. The message names the field.
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },

    /// A checkpoint file is missing, truncated or does not hold the tensors the config asks for.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// Input from a caller that the model cannot run: unknown token ids, too-long sequences,
    /// a batch that does not fit the KV cache.
    #[error("{0}")]
    Input(String),

    /// Tensors handed to a kernel do not have the shapes it needs (a bug in the caller).
    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: &'static str, msg: String },

    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(path: &Path, msg: impl Into<String>) -> Self {
        Error::Config { path: path.to_path_buf(), msg: msg.into() }
    }

    pub fn checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
    }

    pub fn io(path: &Path, error: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), error }
    }

    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
}

/// Fails with a shape error unless `cond` holds.
pub(crate) fn ensure_shape(cond: bool, op: &'static str, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::shape(op, msg()))
    }
}
