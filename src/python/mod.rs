//! The only pyo3 code: thin handles over the core, error translation, and GIL release around every
//! long call. Python-side conveniences live in `python/fastcifar/`. One job per file:
//! - `mod.rs`: error translation, GIL release, module registration;
//! - `convert.rs`: Python values into core types (the one device parser, dtypes, counts);
//! - `dataset.rs`: `NativeDataset` (and `decode_images`); `digits.rs`: MNIST-style IDX and SVHN files;
//! - `transforms.rs`: `TransformOp`, the transform steps;
//! - `loader.rs`: `NativeLoader` and its `BatchIter`;
//! - `model.rs`: graphs and modules; `locks.rs`: locks without the GIL;
//! - training: `settings.rs` (typed configs), `trainer.rs`, `hooks.rs` (calls into Python),
//!   `state.rs` (results and optimizer state by name), `eval.rs`, `distributed.rs`.
use pyo3::exceptions::{
    PyFileNotFoundError, PyIndexError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;

use crate::error::Error;

mod convert;
mod dataset;
mod digits;
mod distributed;
mod eval;
mod hooks;
mod loader;
mod locks;
mod model;
mod settings;
mod state;
mod trainer;
mod transforms;

pub(crate) use dataset::PyDataset;
pub(crate) use loader::PyLoader;
pub(crate) use locks::{hold, lock, Held};
pub(crate) use transforms::PyOp;

pyo3::create_exception!(
    fastcifar._native,
    DecompressionBombError,
    PyValueError,
    "A file declares more than its kind may hold: an image of more pixels than \
     fastcifar.datasets.MAX_IMAGE_PIXELS (as PIL's DecompressionBombError), or an archive member larger \
     than any CIFAR batch. A ValueError."
);

pub(crate) fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::NotFound { .. } => PyFileNotFoundError::new_err(msg),
        // With the errno, Python picks the subclass (PermissionError, ...) and sets .errno / .filename.
        Error::Io { path, source } => match source.raw_os_error() {
            Some(code) => PyOSError::new_err((code, msg, path.display().to_string())),
            None => PyOSError::new_err(msg),
        },
        Error::Format { .. } | Error::Invalid { .. } => PyValueError::new_err(msg),
        Error::TooLarge { .. } => DecompressionBombError::new_err(msg),
        Error::OutOfMemory { .. } => pyo3::exceptions::PyMemoryError::new_err(msg),
        Error::Torch(_) | Error::Distributed(_) | Error::Busy(_) | Error::Runtime(_) => PyRuntimeError::new_err(msg),
        Error::OutOfRange(_) => PyIndexError::new_err(msg),
        Error::Interrupted => PyKeyboardInterrupt::new_err(msg),
        Error::NonFinite(_) => pyo3::exceptions::PyFloatingPointError::new_err(msg),
        Error::External(inner) => match inner.downcast::<PyErr>() {
            Ok(original) => *original,
            Err(other) => PyRuntimeError::new_err(other.to_string()),
        },
    }
}

type R<T> = Result<T, Error>;

/// Runs a core call with the GIL released, catching panics so that none reaches Python as a crash.
fn release<T: Send>(py: Python<'_>, f: impl FnOnce() -> R<T> + Send) -> PyResult<T> {
    crate::pool::torch_after_fork();
    py.allow_threads(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|p| PyRuntimeError::new_err(format!("internal error: {}", crate::loader::panic_message(&p))))?
        .map_err(to_py)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    crate::pool::torch_after_fork(); // notes this process, so that a forked child can tell

    m.add_class::<PyDataset>()?;
    m.add_class::<dataset::PyCifarFiles>()?;
    m.add_class::<PyOp>()?;
    m.add_class::<PyLoader>()?;
    m.add_class::<loader::PyBatchIter>()?;
    m.add("DeviceError", convert::device_error(m.py())?)?;
    m.add("DecompressionBombError", m.py().get_type::<DecompressionBombError>())?;
    m.add("DEFAULT_MAX_IMAGE_PIXELS", crate::data::folder::DEFAULT_MAX_PIXELS)?;
    m.add_function(wrap_pyfunction!(convert::cuda_is_available, m)?)?;
    m.add_function(wrap_pyfunction!(convert::resolve_device, m)?)?;
    m.add_function(wrap_pyfunction!(dataset::decode_images, m)?)?;
    digits::register(m)?;
    model::register(m)?;
    settings::register(m)?;
    trainer::register(m)?;
    eval::register(m)?;
    Ok(())
}
