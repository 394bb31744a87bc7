//! What the engine hands back to Python, by name: an epoch's and an evaluation's results, the
//! optimizer's state (per-parameter entries in torch.optim's own keys, so that they go straight
//! into a state_dict) and the schedule's counters (a dict, as a checkpoint holds it).
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

use crate::train::optim::Optimizer;
use crate::train::sched::Scheduler;
use crate::train::{EpochStats, EvalReport};

/// One epoch's results.
#[pyclass(frozen, get_all, name = "EpochStats", module = "fastcifar._native")]
pub struct PyEpochStats {
    /// Mean training loss and accuracy over the epoch's images (all ranks').
    loss: f64,
    accuracy: f64,
    images: u64,
    seconds: f64,
    /// The rate of the epoch's last optimizer step.
    lr: f64,
    /// A callback asked to stop: the epoch ended early, at a step boundary.
    stopped: bool,
    /// Ctrl-C stopped it.
    interrupted: bool,
}

impl PyEpochStats {
    pub(crate) fn new(s: &EpochStats, interrupted: bool) -> Self {
        PyEpochStats {
            loss: s.loss,
            accuracy: s.accuracy,
            images: s.images,
            seconds: s.seconds,
            lr: s.lr,
            stopped: s.stopped,
            interrupted,
        }
    }
}

#[pymethods]
impl PyEpochStats {
    fn __repr__(&self) -> String {
        format!(
            "EpochStats(loss={}, accuracy={}, images={}, seconds={}, lr={}, stopped={}, interrupted={})",
            self.loss, self.accuracy, self.images, self.seconds, self.lr, self.stopped, self.interrupted
        )
    }
}

/// An evaluation's results; `confusion` is row-major, true class x predicted.
#[pyclass(frozen, get_all, name = "EvalStats", module = "fastcifar._native")]
pub struct PyEvalStats {
    loss: f64,
    accuracy: f64,
    count: u64,
    confusion: Vec<i64>,
    num_classes: usize,
}

impl From<EvalReport> for PyEvalStats {
    fn from(r: EvalReport) -> Self {
        PyEvalStats {
            loss: r.loss,
            accuracy: r.accuracy,
            count: r.count,
            confusion: r.confusion,
            num_classes: r.num_classes,
        }
    }
}

#[pymethods]
impl PyEvalStats {
    fn __repr__(&self) -> String {
        format!(
            "EvalStats(loss={}, accuracy={}, count={}, num_classes={})",
            self.loss, self.accuracy, self.count, self.num_classes
        )
    }
}

/// The engine optimizer's state. `params[i]` is parameter i's entry as torch.optim keeps it
/// (`step`, and `momentum_buffer` or `exp_avg` / `exp_avg_sq`), or None before its first step.
#[pyclass(frozen, get_all, name = "OptimizerState", module = "fastcifar._native")]
pub struct PyOptimizerState {
    kind: &'static str,
    lr: f64,
    /// The rate the optimizer was made with (schedules scale from it).
    initial_lr: f64,
    /// SGD's momentum or Adam's beta1 now.
    momentum: f64,
    params: Vec<Option<Py<PyDict>>>,
}

impl PyOptimizerState {
    pub(crate) fn new(py: Python<'_>, o: &Optimizer) -> PyResult<Self> {
        let (a, b) = o.buffer_names();
        let params = o
            .state
            .iter()
            .map(|s| {
                let Some(s) = s else { return Ok(None) };
                let d = PyDict::new(py);
                d.set_item("step", s.step)?;
                for (name, buf) in [(Some(a), &s.buf1), (b, &s.buf2)] {
                    if let (Some(name), Some(t)) = (name, buf) {
                        d.set_item(name, PyTensor(t.shallow_clone()))?;
                    }
                }
                Ok(Some(d.unbind()))
            })
            .collect::<PyResult<_>>()?;
        Ok(PyOptimizerState {
            kind: o.kind.name(),
            lr: o.lr,
            initial_lr: o.initial_lr,
            momentum: o.momentum(),
            params,
        })
    }
}

#[pymethods]
impl PyOptimizerState {
    fn __repr__(&self) -> String {
        let n = self.params.iter().filter(|p| p.is_some()).count();
        format!(
            "OptimizerState({}, lr={}, {} of {} parameters with state)",
            self.kind,
            self.lr,
            n,
            self.params.len()
        )
    }
}

/// Loads torch.optim-style per-parameter entries (dicts with `step` and the buffers under the
/// optimizer's names; other keys are not this optimizer's and are left alone).
pub(crate) fn load_param_states(o: &mut Optimizer, states: Vec<Option<Bound<'_, PyDict>>>) -> PyResult<()> {
    if states.len() != o.len() {
        return Err(PyValueError::new_err(format!(
            "optimizer_state_dict: state for {} parameters, the optimizer has {}",
            states.len(),
            o.len()
        )));
    }
    let (a, b) = o.buffer_names();
    for (i, s) in states.into_iter().enumerate() {
        let Some(d) = s else {
            o.state[i] = None;
            continue;
        };
        let step: f64 = match d.get_item("step")? {
            Some(v) => v.extract()?,
            None => 0.0,
        };
        let buf = |name: Option<&str>| -> PyResult<Option<tch::Tensor>> {
            let Some(name) = name else { return Ok(None) };
            Ok(d.get_item(name)?
                .map(|v| v.extract::<Option<PyTensor>>())
                .transpose()?
                .flatten()
                .map(|t| t.0))
        };
        o.set_state(i, step, buf(Some(a))?, buf(b)?).map_err(super::to_py)?;
    }
    Ok(())
}

/// The schedule's counters and ReduceLROnPlateau's state, as a checkpoint holds them.
pub(crate) fn schedule_state<'py>(py: Python<'py>, s: &Scheduler) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("epoch", s.epoch)?;
    d.set_item("step", s.step)?;
    d.set_item("plateau_lr", s.plateau_lr)?;
    d.set_item("best", s.best)?;
    d.set_item("num_bad", s.num_bad)?;
    d.set_item("cooldown_counter", s.cooldown_counter)?;
    d.set_item("base_lr", s.base_lr)?;
    Ok(d)
}

/// The inverse of `schedule_state`.
pub(crate) fn load_schedule_state(s: &mut Scheduler, d: &Bound<'_, PyDict>) -> PyResult<()> {
    let item = |k: &str| {
        d.get_item(k)?
            .ok_or_else(|| PyValueError::new_err(format!("scheduler_state_dict: missing '{k}'")))
    };
    let g = |k: &str| -> PyResult<f64> { item(k)?.extract() };
    let n = |k: &str| -> PyResult<u64> {
        let v = item(k)?;
        v.extract::<u64>()
            .map_err(|_| PyValueError::new_err(format!("scheduler_state_dict: '{k}' is {v}, not a count")))
    };
    let (epoch, step, num_bad, cooldown_counter) = (n("epoch")?, n("step")?, n("num_bad")?, n("cooldown_counter")?);
    let (plateau_lr, best, base_lr) = (g("plateau_lr")?, g("best")?, g("base_lr")?);
    (s.epoch, s.step, s.num_bad, s.cooldown_counter) = (epoch, step, num_bad, cooldown_counter);
    (s.plateau_lr, s.best, s.base_lr) = (plateau_lr, best, base_lr);
    Ok(())
}
