//! Evaluation and prediction over a model handle, with the GIL released.
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

use super::hooks::{eval_progress, PyBatches};
use super::model::PyModel;
use super::state::PyEvalStats;
use super::{lock, release, Held, PyLoader};
use crate::error::Error;
use crate::nn::Model;
use crate::train as engine;

/// Loss, accuracy and the confusion matrix over one pass of `loader`, in eval mode, with test-time
/// augmentation at level `tta` (0 none, 1 mirror, 2 mirror and translate); `callback(done, total)`
/// after every batch.
#[pyfunction]
#[pyo3(signature = (model, loader, *, callback = None, tta = 0))]
fn evaluate(
    py: Python<'_>,
    model: &PyModel,
    loader: &PyLoader,
    callback: Option<PyObject>,
    tta: u8,
) -> PyResult<PyEvalStats> {
    let (m, l) = (model.inner.clone(), loader.inner.clone());
    let r = release(py, move || {
        let model = lock(&m)?;
        let _held = Held::mark::<Model>(&m);
        let mut progress = |i: usize, n: usize| -> Result<bool, Error> { eval_progress(&callback, i, n) };
        engine::evaluate(&model, &l, tta, &mut progress)
    })?;
    Ok(r.into())
}

/// `evaluate` over a Python iterable of `(images, labels)` batches.
#[pyfunction]
#[pyo3(signature = (model, batches, *, steps, num_classes, callback = None, tta = 0))]
fn evaluate_batches(
    py: Python<'_>,
    model: &PyModel,
    batches: PyObject,
    steps: usize,
    num_classes: usize,
    callback: Option<PyObject>,
    tta: u8,
) -> PyResult<PyEvalStats> {
    let m = model.inner.clone();
    let mut it = PyBatches::new(py, batches)?;
    let r = {
        let it = &mut it;
        release(py, move || {
            let model = lock(&m)?;
            let _held = Held::mark::<Model>(&m);
            let mut progress = |i: usize, n: usize| -> Result<bool, Error> { eval_progress(&callback, i, n) };
            engine::evaluate_batches(
                &model,
                it,
                engine::Source { labels: None, steps },
                num_classes,
                tta,
                &mut progress,
            )
        })?
    };
    Ok(r.into())
}

/// Eval-mode logits of a float batch, `batch_size` at a time, at TTA level `tta` (as `evaluate`).
#[pyfunction]
#[pyo3(signature = (model, x, *, batch_size = 256, tta = 0))]
fn predict_logits(py: Python<'_>, model: &PyModel, x: PyTensor, batch_size: i64, tta: u8) -> PyResult<PyTensor> {
    let m = model.inner.clone();
    let y = release(py, move || engine::predict(&*lock(&m)?, &x.0, batch_size, tta))?;
    Ok(PyTensor(y))
}

/// How many tensor values the engine has read back to the host in this process (each one a wait
/// for the device on CUDA): reads happen where a metric is reported, never once per step.
#[pyfunction]
fn host_reads() -> u64 {
    engine::readback::count()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(host_reads, m)?)?;
    m.add_class::<PyEvalStats>()?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_batches, m)?)?;
    m.add_function(wrap_pyfunction!(predict_logits, m)?)?;
    Ok(())
}
