//! The training engine's handle: optimizer, schedule and settings bound to a model, and the epoch
//! calls that run the loop with the GIL released.
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

use super::distributed::process_group;
use super::hooks::{PyBatches, PyHooks, PyTrainHooks};
use super::model::PyModel;
use super::settings::{PyLookaheadConfig, PyOptimizerConfig, PyScheduleConfig, PyTrainConfig};
use super::state::{load_param_states, load_schedule_state, schedule_state, PyEpochStats, PyOptimizerState};
use super::{hold, lock, release, to_py, Held, PyLoader};
use crate::error::Error;
use crate::nn::Model;
use crate::train::lookahead::Lookahead;
use crate::train::optim::Optimizer;
use crate::train::sched::Scheduler;
use crate::train::{self as engine, TrainConfig, TrainState};

/// Optimizer + schedule + settings bound to a model.
#[pyclass(frozen, name = "NativeTrainer", module = "fastcifar._native")]
pub struct PyTrainer {
    state: Arc<Mutex<TrainState>>,
}

#[pymethods]
impl PyTrainer {
    /// `params`: the tensors the optimizer updates (the model's, or a part of them).
    #[new]
    #[pyo3(signature = (model, *, params, optimizer, schedule = None, config = None))]
    fn new(
        py: Python<'_>,
        model: &PyModel,
        params: Vec<PyTensor>,
        optimizer: &PyOptimizerConfig,
        schedule: Option<&PyScheduleConfig>,
        config: Option<&PyTrainConfig>,
    ) -> PyResult<Self> {
        let s = optimizer.settings;
        let opt = Optimizer::new(s.kind, s.lr, params.into_iter().map(|p| p.0).collect()).map_err(to_py)?;
        let sched = schedule.map(|c| Scheduler::new(c.cfg.clone(), s.lr));
        let cfg = config.map_or_else(TrainConfig::default, |c| c.cfg.clone());
        let device = hold(py, &model.inner)?.device();
        let mut state = TrainState::new(opt, sched, cfg, device).map_err(to_py)?;
        state.apply_schedule();
        Ok(PyTrainer {
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// Trains `model` for one epoch of `batches` (a Python iterable of `(images, labels)`, `steps`
    /// long), pulled with the GIL taken for each batch only: loaders whose work is not all in Rust.
    #[pyo3(signature = (model, batches, *, steps, epoch, hooks = None))]
    fn train_batches(
        &self,
        py: Python<'_>,
        model: &PyModel,
        batches: PyObject,
        steps: usize,
        epoch: u64,
        hooks: Option<&PyTrainHooks>,
    ) -> PyResult<PyEpochStats> {
        let mut it = PyBatches::new(py, batches)?;
        let hooks = PyHooks::new(py, hooks);
        self.run_epoch(py, model, hooks, move |m, st, h| {
            st.train_batches(m, &mut it, engine::Source { labels: None, steps }, epoch, h)
        })
    }

    /// Trains `model` for one epoch of `loader` (its epoch number `epoch`) with the GIL released.
    #[pyo3(signature = (model, loader, *, epoch, hooks = None))]
    fn train_epoch(
        &self,
        py: Python<'_>,
        model: &PyModel,
        loader: &PyLoader,
        epoch: u64,
        hooks: Option<&PyTrainHooks>,
    ) -> PyResult<PyEpochStats> {
        let l = loader.inner.clone();
        let hooks = PyHooks::new(py, hooks);
        self.run_epoch(py, model, hooks, move |m, st, h| st.train_epoch(m, &l, epoch, h))
    }

    /// Joins a process group (fastcifar.distributed.ProcessGroup): gradients are then averaged
    /// across its ranks every optimizer step, in buckets of `bucket_cap_mb`. None leaves it.
    #[pyo3(signature = (group = None, bucket_cap_mb = 25.0))]
    fn set_process_group(&self, py: Python<'_>, group: Option<PyObject>, bucket_cap_mb: f64) -> PyResult<()> {
        let dist = process_group(py, group, bucket_cap_mb)?;
        hold(py, &self.state)?.dist = dist;
        Ok(())
    }

    /// Parameter groups: per parameter of the optimizer, its rate as a multiple of the optimizer's
    /// (the schedule moves both) and its weight decay (None: the optimizer's).
    fn set_param_groups(&self, py: Python<'_>, lr_scale: Vec<f64>, weight_decay: Vec<Option<f64>>) -> PyResult<()> {
        let mut st = hold(py, &self.state)?;
        let st = &mut *st;
        let kind = st.sched.as_ref().map(|s| &s.kind);
        st.opt.set_groups(lr_scale, weight_decay, kind).map_err(to_py)
    }

    /// The optimizer's arithmetic: None by device (torch.optim's rounding on the CPU, float32 tensor
    /// ops on CUDA), True float32 everywhere (the CUDA path, testable on the CPU), False exact.
    #[pyo3(signature = (fast = None))]
    fn set_fast_math(&self, py: Python<'_>, fast: Option<bool>) -> PyResult<()> {
        hold(py, &self.state)?.opt.fast_math = fast;
        Ok(())
    }

    /// airbench's lookahead over `tensors` (see `train::lookahead`); no config removes it.
    #[pyo3(signature = (config = None, tensors = Vec::new()))]
    fn set_lookahead(
        &self,
        py: Python<'_>,
        config: Option<&PyLookaheadConfig>,
        tensors: Vec<PyTensor>,
    ) -> PyResult<()> {
        let la = config.map(|c| Lookahead::new(tensors.into_iter().map(|t| t.0).collect(), c.cfg));
        hold(py, &self.state)?.lookahead = la;
        Ok(())
    }

    /// Copies of the lookahead's average (None before its first update, or without a lookahead).
    fn lookahead_state(&self, py: Python<'_>) -> PyResult<Option<Vec<PyTensor>>> {
        let st = hold(py, &self.state)?;
        let ema = st.lookahead.as_ref().and_then(|l| l.ema.as_ref());
        Ok(ema.map(|e| e.iter().map(|t| PyTensor(t.detach().copy())).collect()))
    }

    /// Restores the lookahead's average (a checkpoint's), on its tensors' devices.
    #[pyo3(signature = (ema = None))]
    fn load_lookahead_state(&self, py: Python<'_>, ema: Option<Vec<PyTensor>>) -> PyResult<()> {
        let mut st = hold(py, &self.state)?;
        let Some(l) = st.lookahead.as_mut() else {
            return Err(PyValueError::new_err("lookahead_state: this trainer has no lookahead"));
        };
        l.set_average(ema.map(|ts| ts.into_iter().map(|t| t.0).collect()))
            .map_err(to_py)
    }

    /// Training stops once the optimizer has taken this many steps in all (None: no limit).
    #[pyo3(signature = (steps = None))]
    fn set_max_steps(&self, py: Python<'_>, steps: Option<u64>) -> PyResult<()> {
        hold(py, &self.state)?.max_steps = steps;
        Ok(())
    }

    /// End of epoch: moves epoch schedules (`metric` for ReduceLROnPlateau).
    #[pyo3(signature = (metric = None))]
    fn end_epoch(&self, py: Python<'_>, metric: Option<f64>) -> PyResult<()> {
        hold(py, &self.state)?.end_epoch(metric).map_err(to_py)
    }

    #[getter]
    fn lr(&self, py: Python<'_>) -> PyResult<f64> {
        Ok(hold(py, &self.state)?.opt.lr)
    }

    /// SGD's momentum or Adam's beta1 now.
    #[getter]
    fn momentum(&self, py: Python<'_>) -> PyResult<f64> {
        Ok(hold(py, &self.state)?.opt.momentum())
    }

    #[getter]
    fn global_step(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(hold(py, &self.state)?.global_step)
    }

    fn set_global_step(&self, py: Python<'_>, step: u64) -> PyResult<()> {
        hold(py, &self.state)?.global_step = step;
        Ok(())
    }

    fn optimizer_state(&self, py: Python<'_>) -> PyResult<PyOptimizerState> {
        let st = hold(py, &self.state)?;
        PyOptimizerState::new(py, &st.opt)
    }

    /// Loads per-parameter entries as torch.optim keeps them (None: no state yet), and the rate
    /// and momentum (or beta1) now.
    #[pyo3(signature = (*, lr, momentum, states))]
    fn load_optimizer_state(
        &self,
        py: Python<'_>,
        lr: f64,
        momentum: f64,
        states: Vec<Option<Bound<'_, PyDict>>>,
    ) -> PyResult<()> {
        let mut st = hold(py, &self.state)?;
        load_param_states(&mut st.opt, states)?;
        st.opt.lr = lr;
        st.opt.set_momentum(momentum);
        Ok(())
    }

    /// The schedule's counters and ReduceLROnPlateau state (None without a schedule).
    fn scheduler_state<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let st = hold(py, &self.state)?;
        st.sched.as_ref().map(|s| schedule_state(py, s)).transpose()
    }

    fn load_scheduler_state(&self, py: Python<'_>, state: Bound<'_, PyDict>) -> PyResult<()> {
        let mut st = hold(py, &self.state)?;
        let Some(s) = st.sched.as_mut() else {
            return Err(PyValueError::new_err(
                "scheduler_state_dict: this trainer has no scheduler",
            ));
        };
        load_schedule_state(s, &state)?;
        st.apply_schedule();
        Ok(())
    }

    /// Moves optimizer state to the model's device (after `model.to`).
    fn sync_device(&self, py: Python<'_>, model: &PyModel) -> PyResult<()> {
        let d = hold(py, &model.inner)?.device();
        let mut st = hold(py, &self.state)?;
        st.opt.to_device(d);
        if st.cfg.needs_scaler(d) && st.scaler.is_none() {
            st.scaler = Some(engine::GradScaler::default());
        }
        Ok(())
    }
}

impl PyTrainer {
    /// One epoch under the model's and the trainer's locks, with the GIL released (the hooks take
    /// it for each callback).
    fn run_epoch(
        &self,
        py: Python<'_>,
        model: &PyModel,
        mut hooks: PyHooks,
        run: impl FnOnce(&mut Model, &mut TrainState, &mut PyHooks) -> Result<engine::EpochStats, Error> + Send,
    ) -> PyResult<PyEpochStats> {
        let (model, state) = (model.inner.clone(), self.state.clone());
        let stats = {
            let h = &mut hooks;
            release(py, move || {
                let mut m = lock(&model)?;
                let mut st = lock(&state)?;
                // Callbacks below run Python on this thread: the model and trainer are busy to them.
                let _held = (Held::mark::<Model>(&model), Held::mark::<TrainState>(&state));
                run(&mut m, &mut st, h)
            })?
        };
        Ok(PyEpochStats::new(&stats, hooks.interrupted))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrainer>()?;
    m.add_class::<PyTrainHooks>()?;
    m.add_class::<PyEpochStats>()?;
    m.add_class::<PyOptimizerState>()?;
    Ok(())
}
