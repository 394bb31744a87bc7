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
    /// A file declares more than its kind can hold (an image of more pixels than the limit, an
    /// archive member larger than any CIFAR batch): refused before anything that size is made.
    #[error("{path}: {msg}")]
    TooLarge { path: PathBuf, msg: String },
    /// An allocation whose size comes from a file failed, or could never fit in this machine's
    /// memory; `what` names the buffer.
    #[error("{what}: cannot allocate {bytes} bytes ({}){}", human_bytes(*bytes), if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    OutOfMemory { what: String, bytes: usize, reason: String },
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

/// `1.5 GB`, `768.0 MB`, `12 bytes`: sizes in messages.
pub fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / 1e6),
        n => format!("{n} bytes"),
    }
}

/// Opens a file for reading, refusing anything that is not a regular file: opening a FIFO blocks
/// until a writer comes (forever, and Ctrl-C cannot stop it), and a device or socket is no data
/// file. Every reader of the core opens its files here. The open itself does not block (O_NONBLOCK,
/// which regular files ignore); the check is on the opened file, so nothing can swap it in between.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    check_regular(path, &file.metadata().map_err(|e| Error::io(path, e))?)?;
    Ok(file)
}

/// The refusal of `open_regular`, for a caller that has the metadata already (a folder scan
/// stats its files rather than open each one).
pub fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    let kind = if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file (a FIFO, socket or device?)"
    };
    Err(Error::format(path, format!("{kind}: only regular files are read")))
}

/// Room for `len` bytes in `v`, or `OutOfMemory` naming `what` (never an abort).
pub fn try_reserve(v: &mut Vec<u8>, len: usize, what: impl std::fmt::Display) -> Result<()> {
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        what: what.to_string(),
        bytes: len,
        reason: String::new(),
    })
}

/// A regular file's bytes (see `open_regular`), with the path in any error; the buffer is
/// allocated fallibly.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_regular(path)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut buf = Vec::new();
    try_reserve(&mut buf, usize::try_from(len).unwrap_or(usize::MAX), path.display())?;
    file.read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
    Ok(buf)
}
