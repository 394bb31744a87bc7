//! Bindings for models, optimizers, schedules and the training engine.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

use super::model::{lock, PyModel};
use super::{release, to_py, PyLoader};
use crate::error::Error;
use crate::train::dist::{Collective, DistState};
use crate::train::optim::{OptKind, Optimizer};
use crate::train::sched::{self, Scheduler};
use crate::train::{self as engine, Lookahead, TrainConfig, TrainState};

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
    "cycle_momentum", "base_momentum", "max_momentum", "mode_min", "factor", "patience", "threshold", "cooldown", "min_lr",
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
            cooldown: s.u("cooldown", 0)?,
            min_lr: s.f("min_lr", 0.0),
        },
        "PiecewiseLinear" => {
            let n = s.u("points", 0)? as usize;
            let mut points = Vec::with_capacity(n);
            for i in 0..n {
                points.push((s.u(&format!("x{i}"), 0)?, s.f(&format!("y{i}"), f64::NAN)));
            }
            sched::Kind::Piecewise { points }
        }
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
            Some(name) => {
                // PiecewiseLinear's points come as x0, y0, x1, y1, ... (settings are flat numbers).
                let n = if name == "PiecewiseLinear" { sched_settings.get("points").copied().unwrap_or(0.0).max(0.0) as usize } else { 0 };
                let point_keys: Vec<String> = (0..n).flat_map(|i| [format!("x{i}"), format!("y{i}")]).chain(["points".to_string()]).collect();
                let known: Vec<&str> = SCHED_KEYS.iter().copied().chain(point_keys.iter().filter(|_| n > 0).map(|k| k.as_str())).collect();
                Some(self::scheduler(name, &Settings::new(sched_settings, &known, name)?, lr)?)
            }
        };
        let cfg = TrainConfig { label_smoothing, amp, grad_accum, grad_clip, log_every };
        let m = model.inner.clone();
        let device = py.allow_threads(move || lock(&m).device());
        let mut state = TrainState::new(opt, sched, cfg, device).map_err(to_py)?;
        state.apply_schedule();
        Ok(PyTrainer { state: Arc::new(Mutex::new(state)) })
    }

    /// Trains `model` for one epoch of `loader` (its epoch number `epoch`) with the GIL released.
    /// `callback` gets a dict every `log_every` steps; returning False, or Ctrl-C, stops at that step.
    #[pyo3(signature = (model, loader, epoch, callback = None))]
    fn train_epoch<'py>(&self, py: Python<'py>, model: &PyModel, loader: &PyLoader, epoch: u64, callback: Option<PyObject>) -> PyResult<(Bound<'py, PyDict>, bool)> {
        let (model, state, l) = (model.inner.clone(), self.state.clone(), loader.inner.clone());
        let mut interrupted = false;
        let mut cb_error: Option<PyErr> = None;
        let stats = {
            let (interrupted, cb_error) = (&mut interrupted, &mut cb_error);
            release(py, move || {
                let mut m = lock(&model);
                let mut st = lock(&state);
                let mut progress = |info: &engine::StepInfo| -> bool {
                    Python::with_gil(|py| {
                        if let Err(e) = py.check_signals() {
                            if e.is_instance_of::<PyKeyboardInterrupt>(py) {
                                *interrupted = true;
                            } else {
                                *cb_error = Some(e);
                            }
                            return false;
                        }
                        let Some(cb) = &callback else { return true };
                        let d = PyDict::new(py);
                        let _ = d.set_item("epoch", info.epoch);
                        let _ = d.set_item("step", info.step);
                        let _ = d.set_item("steps", info.steps);
                        let _ = d.set_item("loss", info.loss);
                        let _ = d.set_item("batch_loss", info.batch_loss);
                        let _ = d.set_item("accuracy", info.accuracy);
                        let _ = d.set_item("images", info.images);
                        let _ = d.set_item("seconds", info.seconds);
                        let _ = d.set_item("lr", info.lr);
                        match cb.call1(py, (d,)) {
                            Ok(r) => !matches!(r.extract::<bool>(py), Ok(false)),
                            Err(e) => {
                                if e.is_instance_of::<PyKeyboardInterrupt>(py) {
                                    *interrupted = true;
                                } else {
                                    *cb_error = Some(e);
                                }
                                false
                            }
                        }
                    })
                };
                st.train_epoch(&mut m, &l, epoch, &mut progress)
            })?
        };
        if let Some(e) = cb_error {
            return Err(e);
        }
        Ok((epoch_dict(py, &stats)?, interrupted))
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
        lock(&self.state).dist = dist;
        Ok(())
    }

    /// Parameter groups: per parameter of the optimizer, its learning rate as a multiple of the
    /// optimizer's (the schedule scales both) and its weight decay (None: the optimizer's).
    fn set_param_groups(&self, lr_scale: Vec<f64>, weight_decay: Vec<Option<f64>>) -> PyResult<()> {
        lock(&self.state).opt.set_groups(lr_scale, weight_decay).map_err(to_py)
    }

    /// The optimizer's arithmetic: None by device (exact float64 rounding on CPU, float32 on
    /// CUDA), True float32 everywhere (tests the CUDA path on CPU), False exact everywhere.
    #[pyo3(signature = (fast = None))]
    fn set_fast_math(&self, fast: Option<bool>) {
        lock(&self.state).opt.fast_math = fast;
    }

    /// airbench's lookahead over `tensors` (see `train::Lookahead`); None removes it.
    #[pyo3(signature = (tensors = None, *, every = 5, start_epoch = 0, decay = 0.95, power = 3.0, total_steps = 1))]
    fn set_lookahead(&self, tensors: Option<Vec<PyTensor>>, every: u64, start_epoch: u64, decay: f64, power: f64, total_steps: u64) -> PyResult<()> {
        let la = match tensors {
            None => None,
            Some(ts) => Some(Lookahead::new(ts.into_iter().map(|t| t.0).collect(), every, start_epoch, decay, power, total_steps).map_err(to_py)?),
        };
        lock(&self.state).lookahead = la;
        Ok(())
    }

    /// Copies of the lookahead's average (None before it exists or without a lookahead).
    fn lookahead_state(&self) -> Option<Vec<PyTensor>> {
        let st = lock(&self.state);
        st.lookahead.as_ref()?.ema.as_ref().map(|e| e.iter().map(|t| PyTensor(t.detach().copy())).collect())
    }

    /// Restores the lookahead's average (from a checkpoint), moved to its tensors' devices.
    #[pyo3(signature = (ema = None))]
    fn load_lookahead_state(&self, ema: Option<Vec<PyTensor>>) -> PyResult<()> {
        let mut st = lock(&self.state);
        let Some(l) = st.lookahead.as_mut() else {
            return Err(PyValueError::new_err("lookahead_state: this trainer has no lookahead"));
        };
        l.ema = match ema {
            None => None,
            Some(ts) => {
                if ts.len() != l.tensors.len() || ts.iter().zip(&l.tensors).any(|(a, b)| a.0.size() != b.size()) {
                    return Err(PyValueError::new_err(format!(
                        "lookahead_state: {} tensors that do not match the model's {} floating-point tensors",
                        ts.len(),
                        l.tensors.len()
                    )));
                }
                Some(ts.into_iter().zip(&l.tensors).map(|(a, b)| a.0.to_device(b.device()).to_kind(b.kind())).collect())
            }
        };
        Ok(())
    }

    /// Training stops once the optimizer has taken this many steps in all (None: no limit).
    #[pyo3(signature = (steps = None))]
    fn set_max_steps(&self, steps: Option<u64>) {
        lock(&self.state).max_steps = steps;
    }

    /// End of epoch: moves epoch schedules (`metric` for ReduceLROnPlateau).
    #[pyo3(signature = (metric = None))]
    fn end_epoch(&self, metric: Option<f64>) -> PyResult<()> {
        lock(&self.state).end_epoch(metric).map_err(to_py)
    }

    #[getter]
    fn lr(&self) -> f64 {
        lock(&self.state).opt.lr
    }

    #[getter]
    fn global_step(&self) -> u64 {
        lock(&self.state).global_step
    }

    /// (name, lr, initial_lr, hyper-parameters, per-parameter state (step, buf1, buf2) or None).
    #[allow(clippy::type_complexity)]
    fn optimizer_state(&self) -> (String, f64, f64, HashMap<String, f64>, Vec<Option<(f64, Option<PyTensor>, Option<PyTensor>)>>) {
        let st = lock(&self.state);
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
            .map(|s| s.as_ref().map(|s| (s.step, s.buf1.as_ref().map(|t| PyTensor(t.detach().copy())), s.buf2.as_ref().map(|t| PyTensor(t.detach().copy())))))
            .collect();
        (o.kind.name().to_string(), o.lr, o.initial_lr, h, states)
    }

    #[allow(clippy::type_complexity)]
    fn load_optimizer_state(&self, lr: f64, momentum: f64, states: Vec<Option<(f64, Option<PyTensor>, Option<PyTensor>)>>) -> PyResult<()> {
        let mut st = lock(&self.state);
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
    fn scheduler_state(&self) -> Option<HashMap<String, f64>> {
        let st = lock(&self.state);
        st.sched.as_ref().map(|s| {
            HashMap::from([
                ("epoch".to_string(), s.epoch as f64),
                ("step".to_string(), s.step as f64),
                ("plateau_lr".to_string(), s.plateau_lr),
                ("best".to_string(), s.best),
                ("num_bad".to_string(), s.num_bad as f64),
                ("cooldown_counter".to_string(), s.cooldown_counter as f64),
                ("base_lr".to_string(), s.base_lr),
            ])
        })
    }

    fn load_scheduler_state(&self, d: HashMap<String, f64>) -> PyResult<()> {
        let mut st = lock(&self.state);
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

    fn set_global_step(&self, step: u64) {
        lock(&self.state).global_step = step;
    }

    /// Moves optimizer state to the model's device (after `model.to`).
    fn sync_device(&self, py: Python<'_>, model: &PyModel) -> PyResult<()> {
        let m = model.inner.clone();
        let d = py.allow_threads(move || lock(&m).device());
        let state = self.state.clone();
        py.allow_threads(move || {
            let mut st = lock(&state);
            st.opt.to_device(d);
            if st.cfg.amp && d.is_cuda() && st.scaler.is_none() {
                st.scaler = Some(engine::GradScaler::default());
            }
        });
        Ok(())
    }
}

/// Loss, accuracy and the confusion matrix (row-major, true x predicted).
#[pyfunction]
#[pyo3(signature = (model, loader, callback = None, tta = 0))]
fn evaluate(py: Python<'_>, model: &PyModel, loader: &PyLoader, callback: Option<PyObject>, tta: u8) -> PyResult<(f64, f64, u64, Vec<i64>, usize)> {
    let (m, l) = (model.inner.clone(), loader.inner.clone());
    let r = release(py, move || {
        let m = lock(&m);
        let mut progress = |i: usize, n: usize| -> bool {
            Python::with_gil(|py| {
                if py.check_signals().is_err() {
                    return false;
                }
                match &callback {
                    Some(cb) => cb.call1(py, (i, n)).is_ok(),
                    None => true,
                }
            })
        };
        engine::evaluate_tta(&m, &l, tta, &mut progress)
    })?;
    Ok((r.loss, r.accuracy, r.count, r.confusion, r.num_classes))
}

#[pyfunction]
#[pyo3(signature = (model, x, batch_size = 256, tta = 0))]
fn predict_logits(py: Python<'_>, model: &PyModel, x: PyTensor, batch_size: i64, tta: u8) -> PyResult<PyTensor> {
    let m = model.inner.clone();
    let y = release(py, move || engine::predict(&lock(&m), &x.0, batch_size, tta))?;
    Ok(PyTensor(y))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrainer>()?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(predict_logits, m)?)?;
    Ok(())
}
