//! The settings that cross into the training engine, typed: an optimizer's, a schedule's and the
//! loop's. Python builds them with keyword arguments; every rule on them is the core's (checked
//! when they are built), so `fastcifar.optim` objects fail at construction as torch's do.
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::Device;
use super::to_py;
use crate::torch_state::{self, Amp, Precision};
use crate::train::lookahead;
use crate::train::optim::{Adam, AdamW, OptKind, Sgd};
use crate::train::sched::{self, Cosine, Mode, OneCycle, Plateau, Step, ThresholdMode, Warmup};
use crate::train::{GroupSettings, TrainConfig};

/// A count from Python (an int) for the core, which counts in unsigned integers.
fn count(name: &str, v: i64) -> PyResult<u64> {
    u64::try_from(v).map_err(|_| PyValueError::new_err(format!("{name}: {v} must be a non-negative integer")))
}

/// Refuses settings given that the kind does not read (a setting accepted and then ignored).
fn refuse_unused(kind: &str, given: &[(&str, bool)]) -> PyResult<()> {
    match given.iter().find(|(_, g)| *g) {
        Some((name, _)) => Err(PyValueError::new_err(format!("{name}: not a setting of {kind}"))),
        None => Ok(()),
    }
}

/// An optimizer's kind, rate and hyper-parameters (absent ones take torch's defaults).
#[pyclass(frozen, name = "OptimizerConfig", module = "fastcifar._native")]
#[derive(Clone)]
pub struct PyOptimizerConfig {
    pub(crate) settings: GroupSettings,
}

#[allow(
    clippy::too_many_arguments,
    reason = "one argument per optimizer setting, as Python passes them"
)]
fn opt_kind(
    kind: &str,
    momentum: Option<f64>,
    dampening: Option<f64>,
    nesterov: Option<bool>,
    weight_decay: Option<f64>,
    betas: Option<(f64, f64)>,
    eps: Option<f64>,
) -> PyResult<OptKind> {
    let sgd_only = [
        ("momentum", momentum.is_some()),
        ("dampening", dampening.is_some()),
        ("nesterov", nesterov.is_some()),
    ];
    let adam_only = [("betas", betas.is_some()), ("eps", eps.is_some())];
    // Absent settings take the core's defaults (torch's), the one place they are written.
    let adam = |d: Adam| {
        let (beta1, beta2) = betas.unwrap_or((d.beta1, d.beta2));
        Adam {
            beta1,
            beta2,
            eps: eps.unwrap_or(d.eps),
            weight_decay: weight_decay.unwrap_or(d.weight_decay),
        }
    };
    Ok(match kind {
        "SGD" => {
            refuse_unused(kind, &adam_only)?;
            let d = Sgd::default();
            OptKind::Sgd(Sgd {
                momentum: momentum.unwrap_or(d.momentum),
                dampening: dampening.unwrap_or(d.dampening),
                nesterov: nesterov.unwrap_or(d.nesterov),
                weight_decay: weight_decay.unwrap_or(d.weight_decay),
            })
        }
        "Adam" => {
            refuse_unused(kind, &sgd_only)?;
            OptKind::Adam(adam(Adam::default()))
        }
        "AdamW" => {
            refuse_unused(kind, &sgd_only)?;
            OptKind::AdamW(AdamW(adam(AdamW::default().0)))
        }
        n => {
            return Err(PyValueError::new_err(format!(
                "optimizer: unknown optimizer '{n}' (SGD, Adam, AdamW)"
            )))
        }
    })
}

/// An optimizer's settings by name, as torch's constructors take them.
fn opt_settings<'py>(py: Python<'py>, s: &GroupSettings) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("lr", s.lr)?;
    match s.kind {
        OptKind::Sgd(o) => {
            d.set_item("momentum", o.momentum)?;
            d.set_item("dampening", o.dampening)?;
            d.set_item("weight_decay", o.weight_decay)?;
            d.set_item("nesterov", o.nesterov)?;
        }
        OptKind::Adam(o) | OptKind::AdamW(AdamW(o)) => {
            d.set_item("betas", (o.beta1, o.beta2))?;
            d.set_item("eps", o.eps)?;
            d.set_item("weight_decay", o.weight_decay)?;
        }
    }
    Ok(d)
}

#[pymethods]
impl PyOptimizerConfig {
    /// A new optimizer's settings, checked as torch's constructors check them.
    #[new]
    #[pyo3(signature = (kind, *, lr = None, momentum = None, dampening = None, nesterov = None, weight_decay = None, betas = None, eps = None))]
    #[allow(
        clippy::too_many_arguments,
        reason = "keyword-only settings, one per torch.optim argument"
    )]
    fn new(
        kind: &str,
        lr: Option<f64>,
        momentum: Option<f64>,
        dampening: Option<f64>,
        nesterov: Option<bool>,
        weight_decay: Option<f64>,
        betas: Option<(f64, f64)>,
        eps: Option<f64>,
    ) -> PyResult<Self> {
        let k = opt_kind(kind, momentum, dampening, nesterov, weight_decay, betas, eps)?;
        let lr = lr.unwrap_or(GroupSettings::default().lr);
        Ok(PyOptimizerConfig {
            settings: GroupSettings::new(k, lr).map_err(to_py)?,
        })
    }

    /// Settings written between the steps of a fit (a param group the user or a torch schedule
    /// changed). The loop checks them when it applies them: the rate may be below zero there.
    #[staticmethod]
    #[pyo3(signature = (kind, *, lr, momentum = None, dampening = None, nesterov = None, weight_decay = None, betas = None, eps = None))]
    #[allow(
        clippy::too_many_arguments,
        reason = "keyword-only settings, one per torch.optim argument"
    )]
    fn written(
        kind: &str,
        lr: f64,
        momentum: Option<f64>,
        dampening: Option<f64>,
        nesterov: Option<bool>,
        weight_decay: Option<f64>,
        betas: Option<(f64, f64)>,
        eps: Option<f64>,
    ) -> PyResult<Self> {
        let kind = opt_kind(kind, momentum, dampening, nesterov, weight_decay, betas, eps)?;
        Ok(PyOptimizerConfig {
            settings: GroupSettings { lr, kind },
        })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.settings.kind.name()
    }

    #[getter]
    fn lr(&self) -> f64 {
        self.settings.lr
    }

    /// The settings by name, as the constructor takes them (`betas` a pair, as torch's).
    fn settings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        opt_settings(py, &self.settings)
    }

    fn __repr__(&self) -> String {
        format!("OptimizerConfig(lr={}, {:?})", self.settings.lr, self.settings.kind)
    }
}

/// A schedule's kind and settings (StepLR, CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau,
/// PiecewiseLinear, or Constant), with an optional linear warm-up.
#[pyclass(frozen, name = "ScheduleConfig", module = "fastcifar._native")]
#[derive(Clone)]
pub struct PyScheduleConfig {
    pub(crate) cfg: sched::Config,
}

/// The keyword settings given to `ScheduleConfig`, read by name: each kind takes the ones it reads
/// (absent ones take the core's defaults), and any left over is refused as not a setting of it.
struct Given<'py> {
    kind: String,
    d: Bound<'py, PyDict>,
}

impl<'py> Given<'py> {
    fn take<T: FromPyObject<'py>>(&self, name: &str) -> PyResult<Option<T>> {
        match self.d.get_item(name)? {
            Some(v) if !v.is_none() => {
                self.d.del_item(name)?;
                v.extract()
                    .map(Some)
                    .map_err(|e| PyTypeError::new_err(format!("{name}: {e} ({})", self.kind)))
            }
            Some(_) => {
                self.d.del_item(name)?;
                Ok(None)
            }
            None => Ok(None),
        }
    }
    fn or<T: FromPyObject<'py>>(&self, name: &str, default: T) -> PyResult<T> {
        Ok(self.take(name)?.unwrap_or(default))
    }
    /// A count (an int >= 0).
    fn count_or(&self, name: &str, default: u64) -> PyResult<u64> {
        self.take::<i64>(name)?.map_or(Ok(default), |v| count(name, v))
    }
    /// A setting torch's constructor requires.
    fn required<T: FromPyObject<'py>>(&self, name: &str) -> PyResult<T> {
        self.take(name)?
            .ok_or_else(|| PyValueError::new_err(format!("{name}: {} needs it", self.kind)))
    }
    fn required_count(&self, name: &str) -> PyResult<u64> {
        count(name, self.required::<i64>(name)?)
    }
    /// Refuses what the kind did not read (a setting accepted and then ignored); None is "not given".
    fn done(self) -> PyResult<()> {
        for (k, v) in self.d.iter() {
            if !v.is_none() {
                return Err(PyValueError::new_err(format!("{k}: not a setting of {}", self.kind)));
            }
        }
        Ok(())
    }

    fn step(&self) -> PyResult<Step> {
        let d = Step::default();
        Ok(Step {
            step_size: self.required_count("step_size")?,
            gamma: self.or("gamma", d.gamma)?,
        })
    }
    fn cosine(&self) -> PyResult<Cosine> {
        let d = Cosine::default();
        Ok(Cosine {
            t_max: self.required_count("T_max")?,
            eta_min: self.or("eta_min", d.eta_min)?,
        })
    }
    fn one_cycle(&self) -> PyResult<OneCycle> {
        let d = OneCycle::default();
        Ok(OneCycle {
            max_lr: self.required("max_lr")?,
            total_steps: self.required_count("total_steps")?,
            pct_start: self.or("pct_start", d.pct_start)?,
            div_factor: self.or("div_factor", d.div_factor)?,
            final_div_factor: self.or("final_div_factor", d.final_div_factor)?,
            cycle_momentum: self.or("cycle_momentum", d.cycle_momentum)?,
            base_momentum: self.or("base_momentum", d.base_momentum)?,
            max_momentum: self.or("max_momentum", d.max_momentum)?,
        })
    }
    fn plateau(&self) -> PyResult<Plateau> {
        let d = Plateau::default();
        let mode = self.take::<String>("mode")?;
        let threshold_mode = self.take::<String>("threshold_mode")?;
        Ok(Plateau {
            mode: mode.map_or(Ok(d.mode), |m| Mode::parse(&m)).map_err(to_py)?,
            factor: self.or("factor", d.factor)?,
            patience: self.count_or("patience", d.patience)?,
            threshold: self.or("threshold", d.threshold)?,
            threshold_mode: threshold_mode
                .map_or(Ok(d.threshold_mode), |m| ThresholdMode::parse(&m))
                .map_err(to_py)?,
            cooldown: self.count_or("cooldown", d.cooldown)?,
            min_lr: self.or("min_lr", d.min_lr)?,
            eps: self.or("eps", d.eps)?,
        })
    }
    fn piecewise(&self) -> PyResult<sched::Kind> {
        let xs: Vec<i64> = self.or("milestones", vec![])?;
        let ys: Vec<f64> = self.or("factors", vec![])?;
        if xs.len() != ys.len() {
            return Err(PyValueError::new_err(format!(
                "milestones: {} steps for {} factors; give one factor per milestone (PiecewiseLinear)",
                xs.len(),
                ys.len()
            )));
        }
        let xs = xs.into_iter().map(|x| count("milestones", x));
        let points = xs.zip(ys).map(|(x, y)| Ok((x?, y))).collect::<PyResult<_>>()?;
        Ok(sched::Kind::Piecewise { points })
    }
    fn kind(&self) -> PyResult<sched::Kind> {
        Ok(match self.kind.as_str() {
            "Constant" => sched::Kind::Constant,
            "StepLR" => sched::Kind::Step(self.step()?),
            "CosineAnnealingLR" => sched::Kind::Cosine(self.cosine()?),
            "OneCycleLR" => sched::Kind::OneCycle(self.one_cycle()?),
            "ReduceLROnPlateau" => sched::Kind::Plateau(self.plateau()?),
            "PiecewiseLinear" => self.piecewise()?,
            n => return Err(PyValueError::new_err(format!("scheduler: unknown scheduler '{n}'"))),
        })
    }
    /// The optional linear warm-up (`warmup_steps`, `warmup_start_factor`), any kind.
    fn warmup(&self) -> PyResult<Option<Warmup>> {
        let steps = self.take::<i64>("warmup_steps")?;
        let start = self.take::<f64>("warmup_start_factor")?;
        if steps.is_none() && start.is_none() {
            return Ok(None);
        }
        Ok(Some(Warmup {
            steps: count("warmup_steps", steps.unwrap_or(0))?,
            start_factor: start.unwrap_or(0.0),
        }))
    }
}

/// A schedule's settings by name, as `ScheduleConfig` takes them: those of the kind, then the
/// warm-up's.
fn schedule_settings<'py>(py: Python<'py>, cfg: &sched::Config) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match &cfg.kind {
        sched::Kind::Constant => {}
        sched::Kind::Step(s) => {
            d.set_item("step_size", s.step_size)?;
            d.set_item("gamma", s.gamma)?;
        }
        sched::Kind::Cosine(c) => {
            d.set_item("T_max", c.t_max)?;
            d.set_item("eta_min", c.eta_min)?;
        }
        sched::Kind::OneCycle(o) => {
            d.set_item("max_lr", o.max_lr)?;
            d.set_item("total_steps", o.total_steps)?;
            d.set_item("pct_start", o.pct_start)?;
            d.set_item("div_factor", o.div_factor)?;
            d.set_item("final_div_factor", o.final_div_factor)?;
            d.set_item("cycle_momentum", o.cycle_momentum)?;
            d.set_item("base_momentum", o.base_momentum)?;
            d.set_item("max_momentum", o.max_momentum)?;
        }
        sched::Kind::Plateau(p) => {
            d.set_item("mode", p.mode.name())?;
            d.set_item("factor", p.factor)?;
            d.set_item("patience", p.patience)?;
            d.set_item("threshold", p.threshold)?;
            d.set_item("threshold_mode", p.threshold_mode.name())?;
            d.set_item("cooldown", p.cooldown)?;
            d.set_item("min_lr", p.min_lr)?;
            d.set_item("eps", p.eps)?;
        }
        sched::Kind::Piecewise { points } => {
            d.set_item("milestones", points.iter().map(|p| p.0).collect::<Vec<_>>())?;
            d.set_item("factors", points.iter().map(|p| p.1).collect::<Vec<_>>())?;
        }
    }
    if let Some(w) = cfg.warmup {
        d.set_item("warmup_steps", w.steps)?;
        d.set_item("warmup_start_factor", w.start_factor)?;
    }
    Ok(d)
}

#[pymethods]
impl PyScheduleConfig {
    /// `settings`: the kind's settings by name (torch's names: `T_max`, `mode`, ...) and the
    /// warm-up's; every rule on them is the core's (`sched::Config::new`).
    #[new]
    #[pyo3(signature = (kind, **settings))]
    fn new(py: Python<'_>, kind: &str, settings: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        // A copy: each kind takes what it reads from it, so what is left was not read.
        let d = match settings {
            Some(d) => d.copy()?,
            None => PyDict::new(py),
        };
        let given = Given {
            kind: kind.to_string(),
            d,
        };
        let (k, warmup) = (given.kind()?, given.warmup()?);
        given.done()?;
        Ok(PyScheduleConfig {
            cfg: sched::Config::new(k, warmup).map_err(to_py)?,
        })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.cfg.kind.name()
    }

    /// The settings by name, as the constructor takes them: those of the kind, then the warm-up's.
    fn settings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        schedule_settings(py, &self.cfg)
    }

    fn __repr__(&self) -> String {
        format!("ScheduleConfig({:?}, warmup={:?})", self.cfg.kind, self.cfg.warmup)
    }
}

/// A lookahead's settings (airbench's average of the weights; see `train::lookahead`).
#[pyclass(frozen, name = "LookaheadConfig", module = "fastcifar._native")]
#[derive(Clone)]
pub struct PyLookaheadConfig {
    pub(crate) cfg: lookahead::Config,
}

#[pymethods]
impl PyLookaheadConfig {
    #[new]
    #[pyo3(signature = (*, total_steps, every = None, decay = None, power = None))]
    fn new(total_steps: i64, every: Option<i64>, decay: Option<f64>, power: Option<f64>) -> PyResult<Self> {
        let d = lookahead::Config::default();
        let total_steps = count("total_steps", total_steps)?;
        let every = every.map_or(Ok(d.every), |v| count("every", v))?;
        let (decay, power) = (decay.unwrap_or(d.decay), power.unwrap_or(d.power));
        Ok(PyLookaheadConfig {
            cfg: lookahead::Config::new(total_steps, every, decay, power).map_err(to_py)?,
        })
    }

    /// The settings by name, as the constructor takes them.
    fn settings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        lookahead_settings(py, &self.cfg)
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.cfg)
    }
}

fn lookahead_settings<'py>(py: Python<'py>, cfg: &lookahead::Config) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("total_steps", cfg.total_steps)?;
    d.set_item("every", cfg.every)?;
    d.set_item("decay", cfg.decay)?;
    d.set_item("power", cfg.power)?;
    Ok(d)
}

/// The loop's settings.
#[pyclass(frozen, name = "TrainConfig", module = "fastcifar._native")]
#[derive(Clone)]
pub struct PyTrainConfig {
    pub(crate) cfg: TrainConfig,
}

#[pymethods]
impl PyTrainConfig {
    #[new]
    /// `precision`: "float32", "bf16" or "fp16", as `resolve_amp` gives it for the device.
    #[pyo3(signature = (*, label_smoothing = None, precision = None, grad_accum_steps = None, grad_clip = None, log_every = None))]
    fn new(
        label_smoothing: Option<f64>,
        precision: Option<&str>,
        grad_accum_steps: Option<i64>,
        grad_clip: Option<f64>,
        log_every: Option<i64>,
    ) -> PyResult<Self> {
        let d = TrainConfig::default();
        let whole =
            |name: &str, v: Option<i64>, default: usize| v.map_or(Ok(default), |v| count(name, v).map(|c| c as usize));
        let cfg = TrainConfig {
            label_smoothing: label_smoothing.unwrap_or(d.label_smoothing),
            precision: precision.map_or(Ok(d.precision), Precision::parse).map_err(to_py)?,
            grad_accum: whole("grad_accum_steps", grad_accum_steps, d.grad_accum)?,
            grad_clip: grad_clip.or(d.grad_clip),
            log_every: whole("log_every", log_every, d.log_every)?,
        };
        cfg.validate().map_err(to_py)?;
        Ok(PyTrainConfig { cfg })
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.cfg)
    }
}

/// The precision that `amp` (True / False / "bf16" / "fp16" as "auto" / "off" / ...) gives on
/// `device`, and a note to warn with when amp=True falls back to float32.
#[pyfunction]
#[pyo3(signature = (amp, device, *, cuda_bf16 = false))]
fn resolve_amp(amp: &str, device: Device, cuda_bf16: bool) -> PyResult<(String, Option<String>)> {
    let (p, note) = Amp::parse(amp)
        .and_then(|a| a.resolve(device.device, cuda_bf16))
        .map_err(to_py)?;
    Ok((p.name().to_string(), note))
}

/// The bf16 feature this CPU has natively (libtorch's cpuinfo: "amx_bf16" or "avx512_bf16"), or None.
#[pyfunction]
fn cpu_native_bf16() -> Option<&'static str> {
    torch_state::cpu_native_bf16()
}

/// The default of every setting above, by constructor (torch's class names, `Trainer` for the
/// loop's), from the core's `impl Default`s: the one place each is written. Settings that torch
/// requires (a schedule's `step_size`, `T_max`, `max_lr`, `total_steps`; `Lookahead`'s
/// `total_steps`) have none and are left out.
#[pyfunction]
fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    let lr = GroupSettings::default().lr;
    for kind in [
        OptKind::Sgd(Sgd::default()),
        OptKind::Adam(Adam::default()),
        OptKind::AdamW(AdamW::default()),
    ] {
        out.set_item(kind.name(), opt_settings(py, &GroupSettings { lr, kind })?)?;
    }
    let schedules = [
        (sched::Kind::Step(Step::default()), &["step_size"][..]),
        (sched::Kind::Cosine(Cosine::default()), &["T_max"]),
        (sched::Kind::OneCycle(OneCycle::default()), &["max_lr", "total_steps"]),
        (sched::Kind::Plateau(Plateau::default()), &[]),
    ];
    for (kind, required) in schedules {
        let name = kind.name();
        let d = schedule_settings(py, &sched::Config { kind, warmup: None })?;
        for r in required {
            d.del_item(r)?;
        }
        out.set_item(name, d)?;
    }
    let d = lookahead_settings(py, &lookahead::Config::default())?;
    d.del_item("total_steps")?;
    out.set_item("Lookahead", d)?;
    let t = TrainConfig::default();
    let d = PyDict::new(py);
    d.set_item("label_smoothing", t.label_smoothing)?;
    d.set_item("grad_accum_steps", t.grad_accum)?;
    d.set_item("grad_clip", t.grad_clip)?;
    d.set_item("log_every", t.log_every)?;
    out.set_item("Trainer", d)?;
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(defaults, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_amp, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_native_bf16, m)?)?;
    m.add_class::<PyOptimizerConfig>()?;
    m.add_class::<PyScheduleConfig>()?;
    m.add_class::<PyTrainConfig>()?;
    m.add_class::<PyLookaheadConfig>()?;
    Ok(())
}
