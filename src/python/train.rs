//! Bindings for models, optimizers, schedules and the training engine.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

use super::model::PyModel;
use super::{hold, lock, release, to_py, Held, PyLoader};
use crate::error::Error;
use crate::nn::Model;
use crate::train::dist::{Collective, DistState};
use crate::train::optim::{OptKind, Optimizer};
use crate::train::sched::{self, Scheduler};
use crate::train::{self as engine, GroupSettings, Hooks, TrainConfig, TrainState};

/// Reads numeric settings from a Python dict, refusing unknown keys (typos).
struct Settings(HashMap<String, f64>);

impl Settings {
    fn new(d: HashMap<String, f64>, known: &[&str], what: &str) -> PyResult<Settings> {
        if let Some(k) = d.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(PyValueError::new_err(format!("{k}: unknown option for {what} (known: {})", known.join(", "))));
        }
        Ok(Settings(d))
    }
    fn f(&self, k: &str, default: f64) -> f64 {
        self.0.get(k).copied().unwrap_or(default)
    }
    fn u(&self, k: &str, default: u64) -> PyResult<u64> {
        let v = self.f(k, default as f64);
        if v < 0.0 || v.fract() != 0.0 {
            return Err(PyValueError::new_err(format!("{k}: {v} must be a non-negative integer")));
        }
        Ok(v as u64)
    }
    fn b(&self, k: &str, default: bool) -> bool {
        self.0.get(k).map_or(default, |v| *v != 0.0)
    }
}

/// A torch.distributed process group seen through a Python object with `rank`, `world_size`,
/// `all_reduce(tensors)` and `any(flags)` (fastcifar.distributed.ProcessGroup).
struct PyCollective {
    obj: PyObject,
    rank: usize,
    world: usize,
}

impl PyCollective {
    fn fail(&self, op: &str, e: PyErr) -> Error {
        Error::Distributed(format!(
            "distributed {op} failed on rank {} of {}: {e} (another rank probably failed, stopped or timed out)",
            self.rank, self.world
        ))
    }
}

impl Collective for PyCollective {
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&mut self, tensors: &[tch::Tensor]) -> Result<(), Error> {
        Python::with_gil(|py| {
            let list: Vec<PyTensor> = tensors.iter().map(|t| PyTensor(t.shallow_clone())).collect();
            self.obj.call_method1(py, "all_reduce", (list,)).map(|_| ()).map_err(|e| self.fail("all_reduce", e))
        })
    }
    fn any(&mut self, flags: &[bool]) -> Result<Vec<bool>, Error> {
        Python::with_gil(|py| {
            self.obj.call_method1(py, "any", (flags.to_vec(),)).and_then(|r| r.extract::<Vec<bool>>(py)).map_err(|e| self.fail("any", e))
        })
    }
}

fn optimizer_kind(name: &str, s: &Settings) -> PyResult<OptKind> {
    Ok(match name {
        "SGD" => OptKind::Sgd {
            momentum: s.f("momentum", 0.0),
            dampening: s.f("dampening", 0.0),
            nesterov: s.b("nesterov", false),
            weight_decay: s.f("weight_decay", 0.0),
        },
        "Adam" => OptKind::Adam { beta1: s.f("beta1", 0.9), beta2: s.f("beta2", 0.999), eps: s.f("eps", 1e-8), weight_decay: s.f("weight_decay", 0.0) },
        "AdamW" => OptKind::AdamW { beta1: s.f("beta1", 0.9), beta2: s.f("beta2", 0.999), eps: s.f("eps", 1e-8), weight_decay: s.f("weight_decay", 1e-2) },
        n => return Err(PyValueError::new_err(format!("optimizer: unknown optimizer '{n}' (SGD, Adam, AdamW)"))),
    })
}

const OPT_KEYS: &[&str] = &["lr", "momentum", "dampening", "nesterov", "weight_decay", "beta1", "beta2", "eps"];
const SCHED_KEYS: &[&str] = &[
    "step_size", "gamma", "T_max", "eta_min", "max_lr", "total_steps", "pct_start", "div_factor", "final_div_factor",
    "cycle_momentum", "base_momentum", "max_momentum", "mode_min", "factor", "patience", "threshold", "threshold_abs", "cooldown", "min_lr", "eps",
    "warmup_steps", "warmup_start_factor",
];

fn scheduler(name: &str, s: &Settings, base_lr: f64) -> PyResult<Scheduler> {
    let kind = match name {
        "Constant" => sched::Kind::Constant,
        "StepLR" => sched::Kind::Step { step_size: s.u("step_size", 0)?, gamma: s.f("gamma", 0.1) },
        "CosineAnnealingLR" => sched::Kind::Cosine { t_max: s.u("T_max", 0)?, eta_min: s.f("eta_min", 0.0) },
        "OneCycleLR" => sched::Kind::OneCycle {
            max_lr: s.f("max_lr", 0.0),
            total_steps: s.u("total_steps", 0)?,
            pct_start: s.f("pct_start", 0.3),
            div_factor: s.f("div_factor", 25.0),
            final_div_factor: s.f("final_div_factor", 1e4),
            cycle_momentum: s.b("cycle_momentum", true),
            base_momentum: s.f("base_momentum", 0.85),
            max_momentum: s.f("max_momentum", 0.95),
        },
        "ReduceLROnPlateau" => sched::Kind::Plateau {
            min_mode: s.b("mode_min", true),
            factor: s.f("factor", 0.1),
            patience: s.u("patience", 10)?,
            threshold: s.f("threshold", 1e-4),
            abs_threshold: s.b("threshold_abs", false),
            cooldown: s.u("cooldown", 0)?,
            min_lr: s.f("min_lr", 0.0),
            eps: s.f("eps", 1e-8),
        },
        n => return Err(PyValueError::new_err(format!("scheduler: unknown scheduler '{n}'"))),
    };
    Scheduler::new(kind, base_lr, s.u("warmup_steps", 0)?, s.f("warmup_start_factor", 0.0)).map_err(to_py)
}

/// Optimizer + schedule + settings bound to a model.
#[pyclass(frozen, name = "NativeTrainer", module = "fastcifar._native")]
pub struct PyTrainer {
    state: Arc<Mutex<TrainState>>,
}

fn epoch_dict<'py>(py: Python<'py>, s: &engine::EpochStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("loss", s.loss)?;
    d.set_item("accuracy", s.accuracy)?;
    d.set_item("images", s.images)?;
    d.set_item("seconds", s.seconds)?;
    d.set_item("lr", s.lr)?;
    d.set_item("stopped", s.stopped)?;
    Ok(d)
}

#[pymethods]
impl PyTrainer {
    #[new]
    #[pyo3(signature = (model, params, optimizer, opt_settings, scheduler, sched_settings, label_smoothing, amp, grad_accum, grad_clip, log_every))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: &PyModel,
        params: Vec<PyTensor>,
        optimizer: &str,
        opt_settings: HashMap<String, f64>,
        scheduler: Option<&str>,
        sched_settings: HashMap<String, f64>,
        label_smoothing: f64,
        amp: bool,
        grad_accum: usize,
        grad_clip: Option<f64>,
        log_every: usize,
    ) -> PyResult<Self> {
        let os = Settings::new(opt_settings, OPT_KEYS, optimizer)?;
        let lr = os.f("lr", 1e-3);
        let kind = optimizer_kind(optimizer, &os)?;
        let opt = Optimizer::new(kind, lr, params.into_iter().map(|p| p.0).collect()).map_err(to_py)?;
        let sched = match scheduler {
            None => None,
            Some(name) => Some(self::scheduler(name, &Settings::new(sched_settings, SCHED_KEYS, name)?, lr)?),
        };
        let cfg = TrainConfig { label_smoothing, amp, grad_accum, grad_clip, log_every };
        let device = hold(py, &model.inner)?.device();
        let mut state = TrainState::new(opt, sched, cfg, device).map_err(to_py)?;
        state.apply_schedule();
        Ok(PyTrainer { state: Arc::new(Mutex::new(state)) })
    }

    /// Trains `model` for one epoch of `batches` (a Python iterable of `(images, labels)`, `steps`
    /// long), pulled with the GIL taken for each batch only: loaders whose work is not all in Rust.
    #[pyo3(signature = (model, batches, steps, epoch, callback = None, *, poll = None, outer = None, owns_optimizer = false))]
    #[allow(clippy::too_many_arguments)]
    fn train_batches<'py>(
        &self,
        py: Python<'py>,
        model: &PyModel,
        batches: PyObject,
        steps: usize,
        epoch: u64,
        callback: Option<PyObject>,
        poll: Option<PyObject>,
        outer: Option<PyObject>,
        owns_optimizer: bool,
    ) -> PyResult<(Bound<'py, PyDict>, bool)> {
        let mut it = PyBatches(batches.bind(py).try_iter()?.unbind());
        let hooks = PyHooks { callback, poll, outer, owns_optimizer, interrupted: false, outer_lr: None };
        self.run_epoch(py, model, hooks, move |m, st, h| st.train_batches(m, &mut it, engine::Source { labels: None, steps }, epoch, h))
    }

    /// Trains `model` for one epoch of `loader` (its epoch number `epoch`) with the GIL released.
    /// `callback(info)` runs every `log_every` steps (False stops); Ctrl-C is seen before every
    /// step. `poll()` (every step) returns None or new `(optimizer, settings)` the user wrote.
    /// `outer(active, grads)` runs after every optimizer step: with `owns_optimizer`, it applies
    /// the update (grads of the parameters at `active`) and returns its lr; otherwise it steps a
    /// per-batch schedule and returns None or the new `(optimizer, settings)`.
    #[pyo3(signature = (model, loader, epoch, callback = None, *, poll = None, outer = None, owns_optimizer = false))]
    #[allow(clippy::too_many_arguments)]
    fn train_epoch<'py>(
        &self,
        py: Python<'py>,
        model: &PyModel,
        loader: &PyLoader,
        epoch: u64,
        callback: Option<PyObject>,
        poll: Option<PyObject>,
        outer: Option<PyObject>,
        owns_optimizer: bool,
    ) -> PyResult<(Bound<'py, PyDict>, bool)> {
        let l = loader.inner.clone();
        let hooks = PyHooks { callback, poll, outer, owns_optimizer, interrupted: false, outer_lr: None };
        self.run_epoch(py, model, hooks, move |m, st, h| st.train_epoch(m, &l, epoch, h))
    }

    /// Joins a process group (fastcifar.distributed.ProcessGroup): gradients are then averaged
    /// across its ranks every optimizer step, in buckets of `bucket_cap_mb`. None leaves it.
    #[pyo3(signature = (group = None, bucket_cap_mb = 25.0))]
    fn set_process_group(&self, py: Python<'_>, group: Option<PyObject>, bucket_cap_mb: f64) -> PyResult<()> {
        let dist = match group {
            None => None,
            Some(obj) => {
                if !(bucket_cap_mb > 0.0 && bucket_cap_mb.is_finite()) {
                    return Err(PyValueError::new_err(format!("bucket_cap_mb: {bucket_cap_mb} must be a positive number")));
                }
                let rank: usize = obj.getattr(py, "rank")?.extract(py)?;
                let world: usize = obj.getattr(py, "world_size")?.extract(py)?;
                let comm = PyCollective { obj, rank, world };
                Some(DistState::new(Box::new(comm), (bucket_cap_mb * 1024.0 * 1024.0) as usize).map_err(to_py)?)
            }
        };
        hold(py, &self.state)?.dist = dist;
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

    /// (name, lr, initial_lr, hyper-parameters, per-parameter state (step, buf1, buf2) or None).
    #[allow(clippy::type_complexity)]
    fn optimizer_state(&self, py: Python<'_>) -> PyResult<(String, f64, f64, HashMap<String, f64>, Vec<Option<(f64, Option<PyTensor>, Option<PyTensor>)>>)> {
        let st = hold(py, &self.state)?;
        let o = &st.opt;
        let mut h = HashMap::new();
        match o.kind {
            OptKind::Sgd { momentum, dampening, nesterov, weight_decay } => {
                h.insert("momentum".into(), momentum);
                h.insert("dampening".into(), dampening);
                h.insert("nesterov".into(), nesterov as i64 as f64);
                h.insert("weight_decay".into(), weight_decay);
            }
            OptKind::Adam { beta1, beta2, eps, weight_decay } | OptKind::AdamW { beta1, beta2, eps, weight_decay } => {
                h.insert("beta1".into(), beta1);
                h.insert("beta2".into(), beta2);
                h.insert("eps".into(), eps);
                h.insert("weight_decay".into(), weight_decay);
            }
        }
        let states = o
            .state
            .iter()
            .map(|s| s.as_ref().map(|s| (s.step, s.buf1.as_ref().map(|t| PyTensor(t.shallow_clone())), s.buf2.as_ref().map(|t| PyTensor(t.shallow_clone())))))
            .collect();
        Ok((o.kind.name().to_string(), o.lr, o.initial_lr, h, states))
    }

    #[allow(clippy::type_complexity)]
    fn load_optimizer_state(&self, py: Python<'_>, lr: f64, momentum: f64, states: Vec<Option<(f64, Option<PyTensor>, Option<PyTensor>)>>) -> PyResult<()> {
        let mut st = hold(py, &self.state)?;
        if states.len() != st.opt.len() {
            return Err(PyValueError::new_err(format!(
                "optimizer_state_dict: state for {} parameters, the optimizer has {}",
                states.len(),
                st.opt.len()
            )));
        }
        for (i, s) in states.into_iter().enumerate() {
            match s {
                Some((step, a, b)) => st.opt.set_state(i, step, a.map(|t| t.0), b.map(|t| t.0)).map_err(to_py)?,
                None => st.opt.state[i] = None,
            }
        }
        st.opt.lr = lr;
        st.opt.set_momentum(momentum);
        Ok(())
    }

    /// The schedule's counters and ReduceLROnPlateau state.
    fn scheduler_state(&self, py: Python<'_>) -> PyResult<Option<HashMap<String, f64>>> {
        let st = hold(py, &self.state)?;
        Ok(st.sched.as_ref().map(|s| {
            HashMap::from([
                ("epoch".to_string(), s.epoch as f64),
                ("step".to_string(), s.step as f64),
                ("plateau_lr".to_string(), s.plateau_lr),
                ("best".to_string(), s.best),
                ("num_bad".to_string(), s.num_bad as f64),
                ("cooldown_counter".to_string(), s.cooldown_counter as f64),
                ("base_lr".to_string(), s.base_lr),
            ])
        }))
    }

    fn load_scheduler_state(&self, py: Python<'_>, d: HashMap<String, f64>) -> PyResult<()> {
        let mut st = hold(py, &self.state)?;
        let Some(s) = st.sched.as_mut() else {
            return Err(PyValueError::new_err("scheduler_state_dict: this trainer has no scheduler"));
        };
        let g = |k: &str| d.get(k).copied().ok_or_else(|| PyValueError::new_err(format!("scheduler_state_dict: missing '{k}'")));
        s.epoch = g("epoch")? as u64;
        s.step = g("step")? as u64;
        s.plateau_lr = g("plateau_lr")?;
        s.best = g("best")?;
        s.num_bad = g("num_bad")? as u64;
        s.cooldown_counter = g("cooldown_counter")? as u64;
        s.base_lr = g("base_lr")?;
        st.apply_schedule();
        Ok(())
    }

    fn set_global_step(&self, py: Python<'_>, step: u64) -> PyResult<()> {
        hold(py, &self.state)?.global_step = step;
        Ok(())
    }

    /// Moves optimizer state to the model's device (after `model.to`).
    fn sync_device(&self, py: Python<'_>, model: &PyModel) -> PyResult<()> {
        let d = hold(py, &model.inner)?.device();
        let mut st = hold(py, &self.state)?;
        st.opt.to_device(d);
        if st.cfg.amp && d.is_cuda() && st.scaler.is_none() {
            st.scaler = Some(engine::GradScaler::default());
        }
        Ok(())
    }
}

/// A Python exception raised by user code, carried through the core unchanged.
fn external(e: PyErr) -> Error {
    Error::External(Box::new(e))
}

/// Ctrl-C as a stop (Ok(true)); any other exception a signal handler raises, as itself.
fn interrupted(py: Python<'_>) -> Result<bool, Error> {
    match py.check_signals() {
        Ok(()) => Ok(false),
        Err(e) if e.is_instance_of::<PyKeyboardInterrupt>(py) => Ok(true),
        Err(e) => Err(external(e)),
    }
}

/// `(optimizer name, settings dict)` from Python into the engine's settings.
fn group_settings(py: Python<'_>, obj: &PyObject) -> Result<Option<GroupSettings>, Error> {
    if obj.is_none(py) {
        return Ok(None);
    }
    let (name, d): (String, HashMap<String, f64>) = obj.extract(py).map_err(external)?;
    let s = Settings::new(d, OPT_KEYS, &name).map_err(external)?;
    let kind = optimizer_kind(&name, &s).map_err(external)?;
    Ok(Some(GroupSettings { lr: s.f("lr", 1e-3), kind }))
}

/// The training loop's hooks over Python: the GIL is taken for each call only.
struct PyHooks {
    callback: Option<PyObject>,
    poll: Option<PyObject>,
    outer: Option<PyObject>,
    owns_optimizer: bool,
    interrupted: bool,
    outer_lr: Option<f64>,
}

impl Hooks for PyHooks {
    fn progress(&mut self, info: &engine::StepInfo) -> Result<bool, Error> {
        Python::with_gil(|py| {
            if interrupted(py)? {
                self.interrupted = true;
                return Ok(false);
            }
            let Some(cb) = &self.callback else { return Ok(true) };
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
            for (k, v) in [("epoch", info.epoch), ("step", info.step as u64), ("steps", info.steps as u64), ("images", info.images)] {
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

    fn outer_step(&mut self, active: &[usize], grads: Option<Vec<tch::Tensor>>, lr: f64, momentum: f64) -> Result<Option<GroupSettings>, Error> {
        let Some(outer) = &self.outer else { return Ok(None) };
        Python::with_gil(|py| {
            let grads: Option<Vec<PyTensor>> = grads.map(|g| g.into_iter().map(PyTensor).collect());
            let r = outer.call1(py, (active.to_vec(), grads, lr, momentum)).map_err(external)?;
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

impl PyTrainer {
    /// One epoch under the model's and the trainer's locks, with the GIL released (the hooks take
    /// it for each callback). Returns the epoch's stats and whether Ctrl-C stopped it.
    fn run_epoch<'py>(
        &self,
        py: Python<'py>,
        model: &PyModel,
        mut hooks: PyHooks,
        run: impl FnOnce(&mut Model, &mut TrainState, &mut PyHooks) -> Result<engine::EpochStats, Error> + Send,
    ) -> PyResult<(Bound<'py, PyDict>, bool)> {
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
        Ok((epoch_dict(py, &stats)?, hooks.interrupted))
    }
}

/// A Python iterator of `(images, labels)` batches, for the engine.
struct PyBatches(Py<pyo3::types::PyIterator>);

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
                        let mut v = v.into_iter();
                        Ok((v.next().unwrap(), v.next().unwrap()))
                    }
                    _ => Err(pyo3::exceptions::PyTypeError::new_err(format!(
                        "loader: a batch must be (images, labels) tensors, got {}",
                        b.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                    ))),
                },
            });
            Some(pair.map(|(x, y)| (x.0, y.0)).map_err(external))
        })
    }
}

/// `evaluate` over a Python iterable of `(images, labels)` batches.
#[pyfunction]
#[pyo3(signature = (model, batches, steps, num_classes, callback = None))]
fn evaluate_batches(py: Python<'_>, model: &PyModel, batches: PyObject, steps: usize, num_classes: usize, callback: Option<PyObject>) -> PyResult<(f64, f64, u64, Vec<i64>, usize)> {
    let m = model.inner.clone();
    let mut it = PyBatches(batches.bind(py).try_iter()?.unbind());
    let r = {
        let it = &mut it;
        release(py, move || {
            let model = lock(&m)?;
            let _held = Held::mark::<Model>(&m);
            let mut progress = |i: usize, n: usize| -> Result<bool, Error> { eval_progress(&callback, i, n) };
            engine::evaluate_batches(&model, it, engine::Source { labels: None, steps }, num_classes, &mut progress)
        })?
    };
    Ok((r.loss, r.accuracy, r.count, r.confusion, r.num_classes))
}

fn eval_progress(callback: &Option<PyObject>, i: usize, n: usize) -> Result<bool, Error> {
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

/// Loss, accuracy and the confusion matrix (row-major, true x predicted).
#[pyfunction]
#[pyo3(signature = (model, loader, callback = None))]
fn evaluate(py: Python<'_>, model: &PyModel, loader: &PyLoader, callback: Option<PyObject>) -> PyResult<(f64, f64, u64, Vec<i64>, usize)> {
    let (m, l) = (model.inner.clone(), loader.inner.clone());
    let r = release(py, move || {
        let model = lock(&m)?;
        let _held = Held::mark::<Model>(&m);
        let mut progress = |i: usize, n: usize| -> Result<bool, Error> { eval_progress(&callback, i, n) };
        engine::evaluate(&model, &l, &mut progress)
    })?;
    Ok((r.loss, r.accuracy, r.count, r.confusion, r.num_classes))
}

#[pyfunction]
#[pyo3(signature = (model, x, batch_size = 256, tta = false))]
fn predict_logits(py: Python<'_>, model: &PyModel, x: PyTensor, batch_size: i64, tta: bool) -> PyResult<PyTensor> {
    let m = model.inner.clone();
    let y = release(py, move || engine::predict(&*lock(&m)?, &x.0, batch_size, tta))?;
    Ok(PyTensor(y))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrainer>()?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_batches, m)?)?;
    m.add_function(wrap_pyfunction!(predict_logits, m)?)?;
    Ok(())
}
