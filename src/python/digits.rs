//! The readers of MNIST-style IDX files and SVHN's `.mat` files, as data sets. The class names and
//! file names come from the Python classes (torchvision's attributes), so a subclass with its own
//! folder or classes needs nothing here.
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;

use super::{release, PyDataset};
use crate::data::{mnist, svhn};

/// One split of an IDX data set under `root` (`root/<folder>/raw/...` or the files in `root`), and
/// the folder read.
#[pyfunction]
fn load_idx(
    py: Python<'_>,
    root: PathBuf,
    folder: String,
    train: bool,
    classes: Vec<String>,
) -> PyResult<(PyDataset, String)> {
    let (ds, dir) = release(py, || mnist::load(&root, &folder, train, classes))?;
    Ok((PyDataset { inner: Arc::new(ds) }, dir.display().to_string()))
}

/// SVHN's `root/<file>`, and the path read.
#[pyfunction]
fn load_svhn(py: Python<'_>, root: PathBuf, file: String, classes: Vec<String>) -> PyResult<(PyDataset, String)> {
    let (ds, path) = release(py, || svhn::load(&root, &file, classes))?;
    Ok((PyDataset { inner: Arc::new(ds) }, path.display().to_string()))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load_idx, m)?)?;
    m.add_function(wrap_pyfunction!(load_svhn, m)?)?;
    Ok(())
}
