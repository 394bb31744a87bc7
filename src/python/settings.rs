//! The settings that cross into the training engine, typed: an optimizer's, a schedule's and the
//! loop's. Python builds them with keyword arguments; every rule on them is the core's (checked
//! when they are built), so `fastcifar.optim` objects fail at construction as torch's do.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::Device;
use super::to_py;
use crate::torch_state::{self, Amp, Precision};
use crate::train::lookahead;
use crate::train::optim::OptKind;
use crate::train::sched::{self, Warmup};
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
    Ok(match kind {
        "SGD" => {
            refuse_unused(kind, &adam_only)?;
            OptKind::Sgd {
                momentum: momentum.unwrap_or(0.0),
                dampening: dampening.unwrap_or(0.0),
                nesterov: nesterov.unwrap_or(false),
                weight_decay: weight_decay.unwrap_or(0.0),
            }
        }
        "Adam" | "AdamW" => {
            refuse_unused(kind, &sgd_only)?;
            let (beta1, beta2) = betas.unwrap_or((0.9, 0.999));
            let eps = eps.unwrap_or(1e-8);
            if kind == "Adam" {
                OptKind::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay: weight_decay.unwrap_or(0.0),
                }
            } else {
                OptKind::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay: weight_decay.unwrap_or(1e-2),
                }
            }
        }
        n => {
            return Err(PyValueError::new_err(format!(
                "optimizer: unknown optimizer '{n}' (SGD, Adam, AdamW)"
            )))
        }
    })
}

#[pymethods]
impl PyOptimizerConfig {
    /// A new optimizer's settings, checked as torch's constructors check them.
    #[new]
    #[pyo3(signature = (kind, *, lr = 1e-3, momentum = None, dampening = None, nesterov = None, weight_decay = None, betas = None, eps = None))]
    #[allow(
        clippy::too_many_arguments,
        reason = "keyword-only settings, one per torch.optim argument"
    )]
    fn new(
        kind: &str,
        lr: f64,
        momentum: Option<f64>,
        dampening: Option<f64>,
        nesterov: Option<bool>,
        weight_decay: Option<f64>,
        betas: Option<(f64, f64)>,
        eps: Option<f64>,
    ) -> PyResult<Self> {
        let k = opt_kind(kind, momentum, dampening, nesterov, weight_decay, betas, eps)?;
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

#[pymethods]
impl PyScheduleConfig {
    #[new]
    #[pyo3(signature = (
        kind, *, step_size = None, gamma = None, T_max = None, eta_min = None, max_lr = None, total_steps = None,
        pct_start = None, div_factor = None, final_div_factor = None, cycle_momentum = None, base_momentum = None,
        max_momentum = None, mode_min = None, factor = None, patience = None, threshold = None, threshold_abs = None,
        cooldown = None, min_lr = None, eps = None, milestones = None, factors = None, warmup_steps = None,
        warmup_start_factor = None
    ))]
    #[allow(
        clippy::too_many_arguments,
        non_snake_case,
        reason = "keyword-only settings named as torch's schedules name them (T_max, T_0)"
    )]
    fn new(
        kind: &str,
        step_size: Option<i64>,
        gamma: Option<f64>,
        T_max: Option<i64>,
        eta_min: Option<f64>,
        max_lr: Option<f64>,
        total_steps: Option<i64>,
        pct_start: Option<f64>,
        div_factor: Option<f64>,
        final_div_factor: Option<f64>,
        cycle_momentum: Option<bool>,
        base_momentum: Option<f64>,
        max_momentum: Option<f64>,
        mode_min: Option<bool>,
        factor: Option<f64>,
        patience: Option<i64>,
        threshold: Option<f64>,
        threshold_abs: Option<bool>,
        cooldown: Option<i64>,
        min_lr: Option<f64>,
        eps: Option<f64>,
        milestones: Option<Vec<i64>>,
        factors: Option<Vec<f64>>,
        warmup_steps: Option<i64>,
        warmup_start_factor: Option<f64>,
    ) -> PyResult<Self> {
        let req = |name: &str, v: Option<i64>| -> PyResult<u64> {
            count(
                name,
                v.ok_or_else(|| PyValueError::new_err(format!("{name}: {kind} needs it")))?,
            )
        };
        let given: Vec<(&str, bool)> = vec![
            ("step_size", step_size.is_some()),
            ("gamma", gamma.is_some()),
            ("T_max", T_max.is_some()),
            ("eta_min", eta_min.is_some()),
            ("max_lr", max_lr.is_some()),
            ("total_steps", total_steps.is_some()),
            ("pct_start", pct_start.is_some()),
            ("div_factor", div_factor.is_some()),
            ("final_div_factor", final_div_factor.is_some()),
            ("cycle_momentum", cycle_momentum.is_some()),
            ("base_momentum", base_momentum.is_some()),
            ("max_momentum", max_momentum.is_some()),
            ("mode_min", mode_min.is_some()),
            ("factor", factor.is_some()),
            ("patience", patience.is_some()),
            ("threshold", threshold.is_some()),
            ("threshold_abs", threshold_abs.is_some()),
            ("cooldown", cooldown.is_some()),
            ("min_lr", min_lr.is_some()),
            ("eps", eps.is_some()),
            ("milestones", milestones.is_some()),
            ("factors", factors.is_some()),
        ];
        let (k, reads): (sched::Kind, &[&str]) = match kind {
            "Constant" => (sched::Kind::Constant, &[]),
            "StepLR" => (
                sched::Kind::Step {
                    step_size: req("step_size", step_size)?,
                    gamma: gamma.unwrap_or(0.1),
                },
                &["step_size", "gamma"],
            ),
            "CosineAnnealingLR" => (
                sched::Kind::Cosine {
                    t_max: req("T_max", T_max)?,
                    eta_min: eta_min.unwrap_or(0.0),
                },
                &["T_max", "eta_min"],
            ),
            "OneCycleLR" => (
                sched::Kind::OneCycle {
                    max_lr: max_lr.ok_or_else(|| PyValueError::new_err(format!("max_lr: {kind} needs it")))?,
                    total_steps: req("total_steps", total_steps)?,
                    pct_start: pct_start.unwrap_or(0.3),
                    div_factor: div_factor.unwrap_or(25.0),
                    final_div_factor: final_div_factor.unwrap_or(1e4),
                    cycle_momentum: cycle_momentum.unwrap_or(true),
                    base_momentum: base_momentum.unwrap_or(0.85),
                    max_momentum: max_momentum.unwrap_or(0.95),
                },
                &[
                    "max_lr",
                    "total_steps",
                    "pct_start",
                    "div_factor",
                    "final_div_factor",
                    "cycle_momentum",
                    "base_momentum",
                    "max_momentum",
                ],
            ),
            "ReduceLROnPlateau" => (
                sched::Kind::Plateau {
                    min_mode: mode_min.unwrap_or(true),
                    factor: factor.unwrap_or(0.1),
                    patience: count("patience", patience.unwrap_or(10))?,
                    threshold: threshold.unwrap_or(1e-4),
                    abs_threshold: threshold_abs.unwrap_or(false),
                    cooldown: count("cooldown", cooldown.unwrap_or(0))?,
                    min_lr: min_lr.unwrap_or(0.0),
                    eps: eps.unwrap_or(1e-8),
                },
                &[
                    "mode_min",
                    "factor",
                    "patience",
                    "threshold",
                    "threshold_abs",
                    "cooldown",
                    "min_lr",
                    "eps",
                ],
            ),
            "PiecewiseLinear" => {
                let (xs, ys) = (milestones.unwrap_or_default(), factors.unwrap_or_default());
                if xs.len() != ys.len() {
                    return Err(PyValueError::new_err(format!(
                        "milestones: {} steps for {} factors; give one factor per milestone (PiecewiseLinear)",
                        xs.len(),
                        ys.len()
                    )));
                }
                let xs = xs.into_iter().map(|x| count("milestones", x));
                let points = xs.zip(ys).map(|(x, y)| Ok((x?, y))).collect::<PyResult<_>>()?;
                (sched::Kind::Piecewise { points }, &["milestones", "factors"])
            }
            n => return Err(PyValueError::new_err(format!("scheduler: unknown scheduler '{n}'"))),
        };
        let unused: Vec<(&str, bool)> = given.into_iter().filter(|(n, _)| !reads.contains(n)).collect();
        refuse_unused(kind, &unused)?;
        let warmup = match (warmup_steps, warmup_start_factor) {
            (None, None) => None,
            (steps, start) => Some(Warmup {
                steps: count("warmup_steps", steps.unwrap_or(0))?,
                start_factor: start.unwrap_or(0.0),
            }),
        };
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
        let d = PyDict::new(py);
        match self.cfg.kind {
            sched::Kind::Constant => {}
            sched::Kind::Step { step_size, gamma } => {
                d.set_item("step_size", step_size)?;
                d.set_item("gamma", gamma)?;
            }
            sched::Kind::Cosine { t_max, eta_min } => {
                d.set_item("T_max", t_max)?;
                d.set_item("eta_min", eta_min)?;
            }
            sched::Kind::OneCycle {
                max_lr,
                total_steps,
                pct_start,
                div_factor,
                final_div_factor,
                cycle_momentum,
                base_momentum,
                max_momentum,
            } => {
                d.set_item("max_lr", max_lr)?;
                d.set_item("total_steps", total_steps)?;
                d.set_item("pct_start", pct_start)?;
                d.set_item("div_factor", div_factor)?;
                d.set_item("final_div_factor", final_div_factor)?;
                d.set_item("cycle_momentum", cycle_momentum)?;
                d.set_item("base_momentum", base_momentum)?;
                d.set_item("max_momentum", max_momentum)?;
            }
            sched::Kind::Plateau {
                min_mode,
                factor,
                patience,
                threshold,
                abs_threshold,
                cooldown,
                min_lr,
                eps,
            } => {
                d.set_item("mode_min", min_mode)?;
                d.set_item("factor", factor)?;
                d.set_item("patience", patience)?;
                d.set_item("threshold", threshold)?;
                d.set_item("threshold_abs", abs_threshold)?;
                d.set_item("cooldown", cooldown)?;
                d.set_item("min_lr", min_lr)?;
                d.set_item("eps", eps)?;
            }
            sched::Kind::Piecewise { ref points } => {
                d.set_item("milestones", points.iter().map(|p| p.0).collect::<Vec<_>>())?;
                d.set_item("factors", points.iter().map(|p| p.1).collect::<Vec<_>>())?;
            }
        }
        if let Some(w) = self.cfg.warmup {
            d.set_item("warmup_steps", w.steps)?;
            d.set_item("warmup_start_factor", w.start_factor)?;
        }
        Ok(d)
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
    #[pyo3(signature = (*, total_steps, every = 5, decay = 0.95, power = 3.0))]
    fn new(total_steps: i64, every: i64, decay: f64, power: f64) -> PyResult<Self> {
        let (total_steps, every) = (count("total_steps", total_steps)?, count("every", every)?);
        Ok(PyLookaheadConfig {
            cfg: lookahead::Config::new(total_steps, every, decay, power).map_err(to_py)?,
        })
    }

    /// The settings by name, as the constructor takes them.
    fn settings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("total_steps", self.cfg.total_steps)?;
        d.set_item("every", self.cfg.every)?;
        d.set_item("decay", self.cfg.decay)?;
        d.set_item("power", self.cfg.power)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.cfg)
    }
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
    #[pyo3(signature = (*, label_smoothing = 0.0, precision = "float32", grad_accum_steps = 1, grad_clip = None, log_every = 20))]
    fn new(
        label_smoothing: f64,
        precision: &str,
        grad_accum_steps: i64,
        grad_clip: Option<f64>,
        log_every: i64,
    ) -> PyResult<Self> {
        let cfg = TrainConfig {
            label_smoothing,
            precision: Precision::parse(precision).map_err(to_py)?,
            grad_accum: count("grad_accum_steps", grad_accum_steps)? as usize,
            grad_clip,
            log_every: count("log_every", log_every)? as usize,
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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(resolve_amp, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_native_bf16, m)?)?;
    m.add_class::<PyOptimizerConfig>()?;
    m.add_class::<PyScheduleConfig>()?;
    m.add_class::<PyTrainConfig>()?;
    m.add_class::<PyLookaheadConfig>()?;
    Ok(())
}
