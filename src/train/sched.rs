//! Learning-rate schedules with torch.optim.lr_scheduler's formulas. Epoch schedules (StepLR,
//! CosineAnnealingLR, ReduceLROnPlateau) move at `on_epoch`, step schedules (OneCycleLR, warm-up) at
//! `on_step`; `lr()` is the rate for the next optimizer step.
use std::f64::consts::PI;

use crate::error::{Error, Result};

/// torch.optim.lr_scheduler.StepLR's settings. `step_size` has no default (torch requires it):
/// `Default` leaves it 0, which `Config::new` refuses by name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub step_size: u64,
    pub gamma: f64,
}

impl Default for Step {
    fn default() -> Self {
        Step {
            step_size: 0,
            gamma: 0.1,
        }
    }
}

/// CosineAnnealingLR's settings. `t_max` (torch's `T_max`) has no default: 0 is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cosine {
    pub t_max: u64,
    pub eta_min: f64,
}

impl Default for Cosine {
    fn default() -> Self {
        Cosine { t_max: 0, eta_min: 0.0 }
    }
}

/// OneCycleLR's settings (two phases, cosine). `max_lr` and `total_steps` have no default: 0 is
/// refused for both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycle {
    pub max_lr: f64,
    pub total_steps: u64,
    pub pct_start: f64,
    pub div_factor: f64,
    pub final_div_factor: f64,
    pub cycle_momentum: bool,
    pub base_momentum: f64,
    pub max_momentum: f64,
}

impl Default for OneCycle {
    fn default() -> Self {
        OneCycle {
            max_lr: 0.0,
            total_steps: 0,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
        }
    }
}

/// ReduceLROnPlateau's `mode`: whether a lower or a higher metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Min,
    Max,
}

/// ReduceLROnPlateau's `threshold_mode`: a relative or an absolute improvement counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdMode {
    Rel,
    Abs,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "min" => Ok(Mode::Min),
            "max" => Ok(Mode::Max),
            o => Err(Error::invalid("mode", format!("'{o}' is not 'min' or 'max'"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Min => "min",
            Mode::Max => "max",
        }
    }
}

impl ThresholdMode {
    pub fn parse(s: &str) -> Result<ThresholdMode> {
        match s {
            "rel" => Ok(ThresholdMode::Rel),
            "abs" => Ok(ThresholdMode::Abs),
            o => Err(Error::invalid("threshold_mode", format!("'{o}' is not 'rel' or 'abs'"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ThresholdMode::Rel => "rel",
            ThresholdMode::Abs => "abs",
        }
    }
}

/// ReduceLROnPlateau's settings; a reduction smaller than `eps` is not made. All have torch's
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plateau {
    pub mode: Mode,
    pub factor: f64,
    pub patience: u64,
    pub threshold: f64,
    pub threshold_mode: ThresholdMode,
    pub cooldown: u64,
    pub min_lr: f64,
    pub eps: f64,
}

impl Default for Plateau {
    fn default() -> Self {
        Plateau {
            mode: Mode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Constant,
    Step(Step),
    Cosine(Cosine),
    OneCycle(OneCycle),
    Plateau(Plateau),
    /// Per optimizer step, `lr * factor(step)`: the factor linear between (step, factor) points
    /// and the last factor after the last point (torch's LambdaLR over a piecewise-linear lambda,
    /// e.g. airbench's triangle).
    Piecewise {
        points: Vec<(u64, f64)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scheduler {
    pub kind: Kind,
    pub base_lr: f64,
    /// Linear warm-up over this many optimizer steps, from `warmup_start * lr` to `lr`.
    pub warmup_steps: u64,
    pub warmup_start: f64,
    pub epoch: u64,
    pub step: u64,
    // ReduceLROnPlateau state.
    pub plateau_lr: f64,
    pub best: f64,
    pub num_bad: u64,
    pub cooldown_counter: u64,
}

/// Linear warm-up over `steps` optimizer steps, from `start_factor * lr` to `lr`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    pub steps: u64,
    pub start_factor: f64,
}

/// A schedule's settings, checked: every rule on a schedule's settings lives in `Config::new`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub kind: Kind,
    pub warmup: Option<Warmup>,
}

impl Config {
    pub fn new(kind: Kind, warmup: Option<Warmup>) -> Result<Config> {
        let what = kind.name();
        let bad = |n: &str, m: String| Error::invalid(n, format!("{m} ({what})"));
        // NaN fails every `>=` below, as it fails torch's comparisons.
        let non_negative = |n: &str, v: f64| {
            if v >= 0.0 {
                Ok(())
            } else {
                Err(bad(n, format!("{v} must be >= 0")))
            }
        };
        match &kind {
            Kind::Constant => {}
            Kind::Step(Step { step_size, gamma }) => {
                if *step_size == 0 {
                    return Err(bad("step_size", "must be at least 1".into()));
                }
                if gamma.is_nan() || *gamma <= 0.0 {
                    return Err(bad("gamma", format!("{gamma} must be > 0")));
                }
            }
            Kind::Cosine(Cosine { t_max, eta_min }) => {
                if *t_max == 0 {
                    return Err(bad("T_max", "must be at least 1".into()));
                }
                non_negative("eta_min", *eta_min)?;
            }
            Kind::OneCycle(OneCycle {
                max_lr,
                total_steps,
                pct_start,
                div_factor,
                final_div_factor,
                base_momentum,
                max_momentum,
                ..
            }) => {
                if *total_steps < 2 {
                    return Err(bad("total_steps", format!("{total_steps} must be at least 2")));
                }
                if !(0.0..=1.0).contains(pct_start) {
                    return Err(bad("pct_start", format!("{pct_start} must be in [0, 1]")));
                }
                if max_lr.is_nan() || *max_lr <= 0.0 {
                    return Err(bad("max_lr", format!("{max_lr} must be > 0")));
                }
                non_negative("div_factor", *div_factor)?;
                non_negative("final_div_factor", *final_div_factor)?;
                non_negative("base_momentum", *base_momentum)?;
                non_negative("max_momentum", *max_momentum)?;
            }
            Kind::Plateau(Plateau {
                factor,
                threshold,
                min_lr,
                eps,
                ..
            }) => {
                if !(0.0..1.0).contains(factor) {
                    return Err(bad("factor", format!("{factor} must be in [0, 1)")));
                }
                non_negative("threshold", *threshold)?;
                non_negative("min_lr", *min_lr)?;
                non_negative("eps", *eps)?;
            }
            Kind::Piecewise { points } => {
                if points.first().is_none_or(|p| p.0 != 0) {
                    return Err(bad("milestones", "must start at step 0".into()));
                }
                if points.windows(2).any(|w| w[1].0 <= w[0].0) {
                    return Err(bad("milestones", "must increase strictly".into()));
                }
                if let Some(p) = points.iter().find(|p| !(p.1 >= 0.0 && p.1.is_finite())) {
                    return Err(bad("factors", format!("{} must be a finite number >= 0", p.1)));
                }
            }
        }
        if let Some(w) = warmup {
            if w.steps == 0 {
                return Err(Error::invalid("warmup_steps", "must be at least 1 (LinearWarmup)"));
            }
            if !(0.0..=1.0).contains(&w.start_factor) {
                return Err(Error::invalid(
                    "warmup_start_factor",
                    format!("{} must be in [0, 1] (LinearWarmup)", w.start_factor),
                ));
            }
        }
        Ok(Config { kind, warmup })
    }
}

impl Kind {
    /// torch's class name (`Constant` for a warm-up alone).
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Constant => "Constant",
            Kind::Step(_) => "StepLR",
            Kind::Cosine(_) => "CosineAnnealingLR",
            Kind::OneCycle(_) => "OneCycleLR",
            Kind::Plateau(_) => "ReduceLROnPlateau",
            Kind::Piecewise { .. } => "PiecewiseLinear",
        }
    }

    /// Whether the rate is the optimizer's times a factor of the counters alone, so that a
    /// parameter group whose rate is a fixed multiple of the optimizer's follows torch's rate for
    /// that group. OneCycleLR sets every group to one rate, and a cosine's `eta_min` or a
    /// plateau's `min_lr` is one floor for all groups: those are not.
    pub fn scales_rate(&self) -> bool {
        match self {
            Kind::Constant | Kind::Step(_) | Kind::Piecewise { .. } => true,
            Kind::Cosine(c) => c.eta_min == 0.0,
            Kind::Plateau(p) => p.min_lr == 0.0,
            Kind::OneCycle(_) => false,
        }
    }
}

impl Scheduler {
    /// A fresh schedule from `base_lr` (the optimizer's rate).
    pub fn new(cfg: Config, base_lr: f64) -> Scheduler {
        let Config { kind, warmup } = cfg;
        let best = match kind {
            Kind::Plateau(Plateau { mode: Mode::Min, .. }) => f64::INFINITY,
            _ => f64::NEG_INFINITY,
        };
        let (warmup_steps, warmup_start) = warmup.map_or((0, 0.0), |w| (w.steps, w.start_factor));
        Scheduler {
            kind,
            base_lr,
            warmup_steps,
            warmup_start,
            epoch: 0,
            step: 0,
            plateau_lr: base_lr,
            best,
            num_bad: 0,
            cooldown_counter: 0,
        }
    }

    /// The settings this schedule was made with.
    pub fn config(&self) -> Config {
        let warmup = (self.warmup_steps > 0).then_some(Warmup {
            steps: self.warmup_steps,
            start_factor: self.warmup_start,
        });
        Config {
            kind: self.kind.clone(),
            warmup,
        }
    }

    fn one_cycle_pos(&self) -> Option<(f64, f64, f64)> {
        // (start, end, pct) of the current phase, torch's two-phase OneCycleLR.
        let Kind::OneCycle(OneCycle {
            total_steps, pct_start, ..
        }) = self.kind
        else {
            return None;
        };
        let end1 = pct_start * total_steps as f64 - 1.0;
        let end2 = total_steps as f64 - 1.0;
        let s = (self.step.min(total_steps - 1)) as f64;
        Some(if s <= end1 {
            (0.0, end1, s / end1.max(f64::MIN_POSITIVE))
        } else {
            (end1, end2, (s - end1) / (end2 - end1))
        })
    }

    fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
        end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0)
    }

    pub fn lr(&self) -> f64 {
        let lr = match self.kind {
            Kind::Constant => self.base_lr,
            Kind::Step(Step { step_size, gamma }) => self.base_lr * gamma.powi((self.epoch / step_size) as i32),
            Kind::Cosine(Cosine { t_max, eta_min }) => {
                eta_min + (self.base_lr - eta_min) * (1.0 + (PI * self.epoch as f64 / t_max as f64).cos()) / 2.0
            }
            Kind::OneCycle(OneCycle {
                max_lr,
                div_factor,
                final_div_factor,
                ..
            }) => {
                let initial = max_lr / div_factor;
                let min_lr = initial / final_div_factor;
                let (_, _, pct) = self.one_cycle_pos().expect("a OneCycle schedule has a position");
                if self.in_first_phase() {
                    Self::cos_anneal(initial, max_lr, pct)
                } else {
                    Self::cos_anneal(max_lr, min_lr, pct)
                }
            }
            Kind::Plateau(_) => self.plateau_lr,
            Kind::Piecewise { ref points } => self.base_lr * piecewise(points, self.step),
        };
        if self.step < self.warmup_steps {
            let f = self.warmup_start + (1.0 - self.warmup_start) * self.step as f64 / self.warmup_steps as f64;
            lr * f
        } else {
            lr
        }
    }

    fn in_first_phase(&self) -> bool {
        match self.kind {
            Kind::OneCycle(OneCycle {
                total_steps, pct_start, ..
            }) => (self.step.min(total_steps - 1) as f64) <= pct_start * total_steps as f64 - 1.0,
            _ => false,
        }
    }

    /// OneCycleLR's cycled momentum for the next step, if it cycles one.
    pub fn momentum(&self) -> Option<f64> {
        let Kind::OneCycle(OneCycle {
            cycle_momentum: true,
            base_momentum,
            max_momentum,
            ..
        }) = self.kind
        else {
            return None;
        };
        let (_, _, pct) = self.one_cycle_pos().expect("a OneCycle schedule has a position");
        Some(if self.in_first_phase() {
            Self::cos_anneal(max_momentum, base_momentum, pct)
        } else {
            Self::cos_anneal(base_momentum, max_momentum, pct)
        })
    }

    /// After an optimizer step. OneCycleLR refuses to go past `total_steps`, as torch's does.
    pub fn on_step(&mut self) -> Result<()> {
        self.step += 1;
        if let Kind::OneCycle(OneCycle { total_steps, .. }) = self.kind {
            if self.step > total_steps {
                return Err(Error::invalid(
                    "OneCycleLR",
                    format!("tried to step {} times; the specified number of total steps is {total_steps} (raise total_steps or train fewer epochs)", self.step),
                ));
            }
        }
        Ok(())
    }

    /// Whether the rate moves at every optimizer step (not only at epoch ends).
    pub fn per_step(&self) -> bool {
        matches!(self.kind, Kind::OneCycle(_) | Kind::Piecewise { .. }) || self.step < self.warmup_steps
    }

    /// End of an epoch. ReduceLROnPlateau needs `metric` (validation loss in the seed).
    pub fn on_epoch(&mut self, metric: Option<f64>) -> Result<()> {
        self.epoch += 1;
        if let Kind::Plateau(Plateau {
            mode,
            factor,
            patience,
            threshold,
            threshold_mode,
            cooldown,
            min_lr,
            eps,
        }) = self.kind
        {
            let m = metric.ok_or_else(|| Error::invalid("metric", "ReduceLROnPlateau needs a metric each epoch"))?;
            let better = match (mode, threshold_mode) {
                (Mode::Min, ThresholdMode::Rel) => m < self.best * (1.0 - threshold),
                (Mode::Min, ThresholdMode::Abs) => m < self.best - threshold,
                (Mode::Max, ThresholdMode::Rel) => m > self.best * (1.0 + threshold),
                (Mode::Max, ThresholdMode::Abs) => m > self.best + threshold,
            };
            if better {
                self.best = m;
                self.num_bad = 0;
            } else {
                self.num_bad += 1;
            }
            if self.cooldown_counter > 0 {
                self.cooldown_counter -= 1;
                self.num_bad = 0;
            }
            if self.num_bad > patience {
                let new = (self.plateau_lr * factor).max(min_lr);
                if self.plateau_lr - new > eps {
                    self.plateau_lr = new;
                }
                self.cooldown_counter = cooldown;
                self.num_bad = 0;
            }
        }
        Ok(())
    }
}

/// The factor at `step`: on the segment between the points around it (slope times step plus
/// intercept, as airbench's `triangle` computes it), the last factor from the last point on.
fn piecewise(points: &[(u64, f64)], step: u64) -> f64 {
    let i = points.iter().rposition(|p| p.0 <= step).unwrap_or(0);
    let Some(&(x1, y1)) = points.get(i + 1) else {
        return points.last().map_or(1.0, |p| p.1);
    };
    let (x0, y0) = points[i];
    let m = (y1 - y0) / (x1 - x0) as f64;
    m * step as f64 + (y0 - m * x0 as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_cosine_and_plateau() {
        let mut s = Scheduler::new(
            Config::new(
                Kind::Step(Step {
                    step_size: 2,
                    gamma: 0.5,
                }),
                None,
            )
            .unwrap(),
            1.0,
        );
        let mut lrs = vec![];
        for _ in 0..5 {
            lrs.push(s.lr());
            s.on_epoch(None).unwrap();
        }
        assert_eq!(lrs, vec![1.0, 1.0, 0.5, 0.5, 0.25]);
        let mut c = Scheduler::new(
            Config::new(
                Kind::Cosine(Cosine {
                    t_max: 4,
                    ..Cosine::default()
                }),
                None,
            )
            .unwrap(),
            1.0,
        );
        c.epoch = 2;
        assert!((c.lr() - 0.5).abs() < 1e-12);
        let mut p = Scheduler::new(
            Config::new(
                Kind::Plateau(Plateau {
                    patience: 1,
                    ..Plateau::default()
                }),
                None,
            )
            .unwrap(),
            1.0,
        );
        for m in [1.0, 1.0, 1.0] {
            p.on_epoch(Some(m)).unwrap();
        }
        assert!((p.lr() - 0.1).abs() < 1e-12);
        assert!(p.on_epoch(None).is_err());
    }

    #[test]
    fn one_cycle_endpoints_and_warmup() {
        let k = Kind::OneCycle(OneCycle {
            max_lr: 1.0,
            total_steps: 100,
            ..OneCycle::default()
        });
        let mut s = Scheduler::new(Config::new(k, None).unwrap(), 1.0);
        assert!((s.lr() - 0.04).abs() < 1e-12);
        assert!((s.momentum().unwrap() - 0.95).abs() < 1e-12);
        s.step = 29;
        assert!((s.lr() - 1.0).abs() < 1e-12);
        s.step = 99;
        assert!((s.lr() - 0.04 / 1e4).abs() < 1e-12);
        let mut w = Scheduler::new(
            Config::new(
                Kind::Constant,
                Some(Warmup {
                    steps: 4,
                    start_factor: 0.0,
                }),
            )
            .unwrap(),
            1.0,
        );
        let v: Vec<f64> = (0..5)
            .map(|_| {
                let l = w.lr();
                w.on_step().unwrap();
                l
            })
            .collect();
        assert_eq!(v, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn every_rule_names_its_setting() {
        let name = |k: Kind, w: Option<Warmup>| Config::new(k, w).unwrap_err().to_string();
        assert!(name(Kind::Step(Step::default()), None).starts_with("step_size"));
        assert!(name(
            Kind::Step(Step {
                step_size: 1,
                gamma: 0.0
            }),
            None
        )
        .starts_with("gamma"));
        assert!(name(
            Kind::Cosine(Cosine {
                t_max: 3,
                eta_min: -1.0
            }),
            None
        )
        .starts_with("eta_min"));
        let plateau = Kind::Plateau(Plateau {
            threshold: f64::NAN,
            ..Plateau::default()
        });
        assert!(name(plateau, None).starts_with("threshold"));
        assert!(name(
            Kind::Constant,
            Some(Warmup {
                steps: 0,
                start_factor: 0.0
            })
        )
        .starts_with("warmup_steps"));
        let c = Config::new(
            Kind::Constant,
            Some(Warmup {
                steps: 3,
                start_factor: 0.5,
            }),
        )
        .unwrap();
        assert_eq!(Scheduler::new(c.clone(), 1.0).config(), c);
    }

    #[test]
    fn piecewise_linear_interpolates_and_holds() {
        let k = Kind::Piecewise {
            points: vec![(0, 0.2), (10, 1.0), (50, 0.07)],
        };
        let mut s = Scheduler::new(Config::new(k, None).unwrap(), 2.0);
        let mut v = vec![];
        for _ in 0..60 {
            v.push(s.lr());
            s.on_step().unwrap();
        }
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(v[0], 0.4) && close(v[5], 1.2) && close(v[10], 2.0));
        assert!(close(v[30], 2.0 * (1.0 + (0.07 - 1.0) * 0.5)) && close(v[55], 0.14));
        assert!(s.per_step() && s.kind.scales_rate());
        let name = |points: Vec<(u64, f64)>| Config::new(Kind::Piecewise { points }, None).unwrap_err().to_string();
        assert!(name(vec![(1, 1.0)]).contains("must start at step 0"));
        assert!(name(vec![(0, 1.0), (0, 2.0)]).contains("increase strictly"));
        assert!(name(vec![(0, f64::NAN)]).starts_with("factors"));
        assert!(name(vec![]).starts_with("milestones"));
    }
}
