//! One error type for the core. `src/python/` maps each variant to the Python exception a PyTorch
//! user expects (FileNotFoundError, ValueError, RuntimeError), so messages name the file or the
//! parameter at fault.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder that should be there is not.
    #[error("{path}: {msg}")]
    NotFound { path: PathBuf, msg: String },
    /// Reading failed at the OS level.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The bytes are there but are not what the format says (truncated, corrupt, wrong layout).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A caller-supplied parameter is out of its domain; `name` is the parameter.
    #[error("{name}: {msg}")]
    Invalid { name: String, msg: String },
    /// libtorch refused an operation.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// A loss or value that must be finite was not (NaN / inf during training).
    #[error("{0}")]
    NonFinite(String),
    /// A collective (all-reduce, broadcast) failed: another rank died, stopped or timed out.
    #[error("{0}")]
    Distributed(String),
    /// An error raised by code outside the core (a Python forward or callback), carried through
    /// unchanged so that the bindings can raise the original exception.
    #[error("{0}")]
    External(Box<dyn std::error::Error + Send + Sync>),
    /// A model or trainer was reached from a callback of the call that holds it (fit's progress
    /// callback calling the model): waiting for it would never end.
    #[error("{0}")]
    Busy(String),
    /// What torch refuses with an IndexError (a class label outside the model's outputs).
    #[error("{0}")]
    OutOfRange(String),
    /// What torch refuses with a RuntimeError, in its words plus the fix (labels of the wrong
    /// dtype or shape, a loss that reaches no trainable parameter).
    #[error("{0}")]
    Runtime(String),
    /// The user asked to stop (Ctrl-C) or a consumer went away.
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn invalid(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Invalid {
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn not_found(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::NotFound {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                path,
                msg: "no such file or directory".into(),
            }
        } else {
            Error::Io { path, source }
        }
    }
}

/// `std::fs::read` with the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
