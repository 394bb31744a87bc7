//! The training and evaluation loops' calls into Python: progress callbacks, Ctrl-C, settings the
//! user or a torch optimizer / schedule writes between steps, and batches pulled from a Python
//! iterable. Each takes the GIL for the call only (the loop runs with it released).
use pyo3::exceptions::{PyKeyboardInterrupt, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

use super::settings::PyOptimizerConfig;
use crate::error::Error;
use crate::train::{self as engine, GroupSettings, Hooks};

/// A Python exception raised by user code, carried through the core unchanged.
pub(crate) fn external(e: PyErr) -> Error {
    Error::External(Box::new(e))
}

/// Ctrl-C as a stop (Ok(true)); any other exception a signal handler raises, as itself.
pub(crate) fn interrupted(py: Python<'_>) -> Result<bool, Error> {
    match py.check_signals() {
        Ok(()) => Ok(false),
        Err(e) if e.is_instance_of::<PyKeyboardInterrupt>(py) => Ok(true),
        Err(e) => Err(external(e)),
    }
}

/// What a fit calls besides the step itself, given once to `train_epoch` / `train_batches`.
/// `progress(info)` runs every `log_every` steps (False stops); Ctrl-C is seen before every step.
/// `poll()` (every step) returns None or an `OptimizerConfig` the user wrote. `outer(active,
/// grads, lr, momentum)` runs after every optimizer step: with `owns_optimizer`, it applies the
/// update (grads of the parameters at `active`) and returns its lr; otherwise it steps a per-batch
/// schedule and returns None or the new `OptimizerConfig`.
#[pyclass(frozen, name = "TrainHooks", module = "fastcifar._native")]
pub struct PyTrainHooks {
    progress: Option<PyObject>,
    poll: Option<PyObject>,
    outer: Option<PyObject>,
    owns_optimizer: bool,
}

#[pymethods]
impl PyTrainHooks {
    #[new]
    #[pyo3(signature = (*, progress = None, poll = None, outer = None, owns_optimizer = false))]
    fn new(progress: Option<PyObject>, poll: Option<PyObject>, outer: Option<PyObject>, owns_optimizer: bool) -> Self {
        PyTrainHooks {
            progress,
            poll,
            outer,
            owns_optimizer,
        }
    }
}

/// The hooks of one epoch, with what they saw.
pub(crate) struct PyHooks {
    progress: Option<PyObject>,
    poll: Option<PyObject>,
    outer: Option<PyObject>,
    owns_optimizer: bool,
    /// Ctrl-C stopped the epoch.
    pub(crate) interrupted: bool,
    outer_lr: Option<f64>,
}

impl PyHooks {
    pub(crate) fn new(py: Python<'_>, h: Option<&PyTrainHooks>) -> Self {
        let c = |o: &Option<PyObject>| o.as_ref().map(|o| o.clone_ref(py));
        match h {
            Some(h) => PyHooks {
                progress: c(&h.progress),
                poll: c(&h.poll),
                outer: c(&h.outer),
                owns_optimizer: h.owns_optimizer,
                interrupted: false,
                outer_lr: None,
            },
            None => PyHooks {
                progress: None,
                poll: None,
                outer: None,
                owns_optimizer: false,
                interrupted: false,
                outer_lr: None,
            },
        }
    }
}

/// An `OptimizerConfig` (or None) from Python into the engine's settings.
fn group_settings(py: Python<'_>, obj: &PyObject) -> Result<Option<GroupSettings>, Error> {
    if obj.is_none(py) {
        return Ok(None);
    }
    let c = obj
        .downcast_bound::<PyOptimizerConfig>(py)
        .map_err(|e| external(PyErr::from(e)))?;
    Ok(Some(c.get().settings))
}

impl Hooks for PyHooks {
    fn progress(&mut self, info: &engine::StepInfo) -> Result<bool, Error> {
        Python::with_gil(|py| {
            if interrupted(py)? {
                self.interrupted = true;
                return Ok(false);
            }
            let Some(cb) = &self.progress else { return Ok(true) };
            let d = PyDict::new(py);
            for (k, v) in [
                ("loss", info.loss),
                ("batch_loss", info.batch_loss),
                ("accuracy", info.accuracy),
                ("seconds", info.seconds),
                ("lr", info.lr),
                ("momentum", info.momentum),
            ] {
                d.set_item(k, v).map_err(external)?;
            }
            for (k, v) in [
                ("epoch", info.epoch),
                ("step", info.step as u64),
                ("steps", info.steps as u64),
                ("images", info.images),
            ] {
                d.set_item(k, v).map_err(external)?;
            }
            match cb.call1(py, (d,)) {
                Ok(r) => Ok(!matches!(r.extract::<bool>(py), Ok(false))),
                Err(e) if e.is_instance_of::<PyKeyboardInterrupt>(py) => {
                    self.interrupted = true;
                    Ok(false)
                }
                Err(e) => Err(external(e)),
            }
        })
    }

    fn poll(&mut self, settings: &mut Option<GroupSettings>) -> Result<bool, Error> {
        Python::with_gil(|py| {
            if interrupted(py)? {
                self.interrupted = true;
                return Ok(true);
            }
            if let Some(p) = &self.poll {
                *settings = group_settings(py, &p.call0(py).map_err(external)?)?;
            }
            Ok(false)
        })
    }

    fn owns_optimizer(&self) -> bool {
        self.owns_optimizer
    }

    fn outer_step(
        &mut self,
        active: &[usize],
        grads: Option<Vec<Option<tch::Tensor>>>,
        lr: f64,
        momentum: f64,
    ) -> Result<Option<GroupSettings>, Error> {
        let Some(outer) = &self.outer else { return Ok(None) };
        Python::with_gil(|py| {
            let grads: Option<Vec<Option<PyTensor>>> = grads.map(|g| g.into_iter().map(|g| g.map(PyTensor)).collect());
            let r = outer
                .call1(py, (active.to_vec(), grads, lr, momentum))
                .map_err(external)?;
            if self.owns_optimizer {
                self.outer_lr = Some(r.extract::<f64>(py).map_err(external)?);
                Ok(None)
            } else {
                group_settings(py, &r)
            }
        })
    }

    fn outer_lr(&self) -> Option<f64> {
        self.outer_lr
    }
}

/// A Python iterator of `(images, labels)` batches, for the engine.
pub(crate) struct PyBatches(Py<pyo3::types::PyIterator>);

impl PyBatches {
    pub(crate) fn new(py: Python<'_>, batches: PyObject) -> PyResult<Self> {
        Ok(PyBatches(batches.bind(py).try_iter()?.unbind()))
    }
}

impl Iterator for PyBatches {
    type Item = Result<(tch::Tensor, tch::Tensor), Error>;
    fn next(&mut self) -> Option<Self::Item> {
        Python::with_gil(|py| {
            let mut it = self.0.bind(py).clone();
            let item = it.next()?;
            // torch's default collate gives [images, labels] (a list); fastcifar's loader a tuple.
            let pair = item.and_then(|b| match b.extract::<(PyTensor, PyTensor)>() {
                Ok(p) => Ok(p),
                Err(_) => match b.extract::<Vec<PyTensor>>() {
                    Ok(v) if v.len() == 2 => {
                        let [x, y]: [PyTensor; 2] = v.try_into().map_err(|_| PyTypeError::new_err("a pair"))?;
                        Ok((x, y))
                    }
                    _ => Err(PyTypeError::new_err(format!(
                        "loader: a batch must be (images, labels) tensors, got {}",
                        b.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                    ))),
                },
            });
            Some(pair.map(|(x, y)| (x.0, y.0)).map_err(external))
        })
    }
}

/// An evaluation's progress callback `callback(done, total)`; Ctrl-C stops.
pub(crate) fn eval_progress(callback: &Option<PyObject>, i: usize, n: usize) -> Result<bool, Error> {
    Python::with_gil(|py| {
        if interrupted(py)? {
            return Ok(false);
        }
        match callback {
            Some(cb) => cb.call1(py, (i, n)).map(|_| true).map_err(external),
            None => Ok(true),
        }
    })
}
