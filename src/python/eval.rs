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

/// Loss, accuracy and the confusion matrix over one pass of `loader`, in eval mode;
/// `callback(done, total)` after every batch.
#[pyfunction]
#[pyo3(signature = (model, loader, *, callback = None))]
fn evaluate(py: Python<'_>, model: &PyModel, loader: &PyLoader, callback: Option<PyObject>) -> PyResult<PyEvalStats> {
    let (m, l) = (model.inner.clone(), loader.inner.clone());
    let r = release(py, move || {
        let model = lock(&m)?;
        let _held = Held::mark::<Model>(&m);
        let mut progress = |i: usize, n: usize| -> Result<bool, Error> { eval_progress(&callback, i, n) };
        engine::evaluate(&model, &l, &mut progress)
    })?;
    Ok(r.into())
}

/// `evaluate` over a Python iterable of `(images, labels)` batches.
#[pyfunction]
#[pyo3(signature = (model, batches, *, steps, num_classes, callback = None))]
fn evaluate_batches(
    py: Python<'_>,
    model: &PyModel,
    batches: PyObject,
    steps: usize,
    num_classes: usize,
    callback: Option<PyObject>,
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
                &mut progress,
            )
        })?
    };
    Ok(r.into())
}

#[pyfunction]
#[pyo3(signature = (model, x, *, batch_size = 256, tta = false))]
fn predict_logits(py: Python<'_>, model: &PyModel, x: PyTensor, batch_size: i64, tta: bool) -> PyResult<PyTensor> {
    let m = model.inner.clone();
    let y = release(py, move || engine::predict(&*lock(&m)?, &x.0, batch_size, tta))?;
    Ok(PyTensor(y))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEvalStats>()?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_batches, m)?)?;
    m.add_function(wrap_pyfunction!(predict_logits, m)?)?;
    Ok(())
}
