//! Learning-rate schedules with torch.optim.lr_scheduler's formulas. Epoch schedules (StepLR,
//! CosineAnnealingLR, ReduceLROnPlateau) move at `on_epoch`, step schedules (OneCycleLR, warm-up) at
//! `on_step`; `lr()` is the rate for the next optimizer step.
use std::f64::consts::PI;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Constant,
    Step { step_size: u64, gamma: f64 },
    Cosine { t_max: u64, eta_min: f64 },
    OneCycle { max_lr: f64, total_steps: u64, pct_start: f64, div_factor: f64, final_div_factor: f64, cycle_momentum: bool, base_momentum: f64, max_momentum: f64 },
    /// ReduceLROnPlateau; `min_mode` = mode "min".
    Plateau { min_mode: bool, factor: f64, patience: u64, threshold: f64, cooldown: u64, min_lr: f64 },
    /// Per optimizer step: `lr * factor(step)`, the factor interpolated linearly between
    /// (step, factor) points (torch's LambdaLR over a piecewise-linear lambda, as airbench's
    /// triangle schedule); the last factor holds after the last point.
    Piecewise { points: Vec<(u64, f64)> },
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

impl Scheduler {
    pub fn new(kind: Kind, base_lr: f64, warmup_steps: u64, warmup_start: f64) -> Result<Scheduler> {
        let bad = |n: &str, m: &str| Err(Error::invalid(n, m.to_string()));
        match &kind {
            Kind::Step { step_size, gamma } => {
                if *step_size == 0 {
                    return bad("step_size", "must be at least 1 (StepLR)");
                }
                if !(*gamma > 0.0) {
                    return bad("gamma", "must be > 0 (StepLR)");
                }
            }
            Kind::Cosine { t_max, .. } if *t_max == 0 => return bad("T_max", "must be at least 1 (CosineAnnealingLR)"),
            Kind::OneCycle { total_steps, pct_start, max_lr, .. } => {
                if *total_steps < 2 {
                    return bad("total_steps", "must be at least 2 (OneCycleLR)");
                }
                if !(0.0..=1.0).contains(pct_start) {
                    return bad("pct_start", "must be in [0, 1] (OneCycleLR)");
                }
                if !(*max_lr > 0.0) {
                    return bad("max_lr", "must be > 0 (OneCycleLR)");
                }
            }
            Kind::Plateau { factor, .. } if !(*factor < 1.0 && *factor >= 0.0) => {
                return bad("factor", "must be in [0, 1) (ReduceLROnPlateau)");
            }
            Kind::Piecewise { points } => {
                if points.is_empty() || points[0].0 != 0 {
                    return bad("milestones", "must start at step 0 (PiecewiseLinear)");
                }
                if points.windows(2).any(|w| w[1].0 <= w[0].0) {
                    return bad("milestones", "must increase strictly (PiecewiseLinear)");
                }
                if points.iter().any(|p| !(p.1 >= 0.0 && p.1.is_finite())) {
                    return bad("factors", "must be finite numbers >= 0 (PiecewiseLinear)");
                }
            }
            _ => {}
        }
        if !(0.0..=1.0).contains(&warmup_start) {
            return bad("warmup_start_factor", "must be in [0, 1]");
        }
        let best = match kind {
            Kind::Plateau { min_mode: true, .. } => f64::INFINITY,
            _ => f64::NEG_INFINITY,
        };
        Ok(Scheduler { kind, base_lr, warmup_steps, warmup_start, epoch: 0, step: 0, plateau_lr: base_lr, best, num_bad: 0, cooldown_counter: 0 })
    }

    fn one_cycle_pos(&self) -> Option<(f64, f64, f64)> {
        // (start, end, pct) of the current phase, torch's two-phase OneCycleLR.
        let Kind::OneCycle { total_steps, pct_start, .. } = self.kind else { return None };
        let end1 = pct_start * total_steps as f64 - 1.0;
        let end2 = total_steps as f64 - 1.0;
        let s = (self.step.min(total_steps - 1)) as f64;
        Some(if s <= end1 { (0.0, end1, s / end1.max(f64::MIN_POSITIVE)) } else { (end1, end2, (s - end1) / (end2 - end1)) })
    }

    fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
        end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0)
    }

    pub fn lr(&self) -> f64 {
        let lr = match self.kind {
            Kind::Constant => self.base_lr,
            Kind::Step { step_size, gamma } => self.base_lr * gamma.powi((self.epoch / step_size) as i32),
            Kind::Cosine { t_max, eta_min } => {
                eta_min + (self.base_lr - eta_min) * (1.0 + (PI * self.epoch as f64 / t_max as f64).cos()) / 2.0
            }
            Kind::OneCycle { max_lr, div_factor, final_div_factor, .. } => {
                let initial = max_lr / div_factor;
                let min_lr = initial / final_div_factor;
                let (_, _, pct) = self.one_cycle_pos().unwrap();
                if self.in_first_phase() {
                    Self::cos_anneal(initial, max_lr, pct)
                } else {
                    Self::cos_anneal(max_lr, min_lr, pct)
                }
            }
            Kind::Plateau { .. } => self.plateau_lr,
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
            Kind::OneCycle { total_steps, pct_start, .. } => (self.step.min(total_steps - 1) as f64) <= pct_start * total_steps as f64 - 1.0,
            _ => false,
        }
    }

    /// OneCycleLR's cycled momentum for the next step, if it cycles one.
    pub fn momentum(&self) -> Option<f64> {
        let Kind::OneCycle { cycle_momentum: true, base_momentum, max_momentum, .. } = self.kind else { return None };
        let (_, _, pct) = self.one_cycle_pos().unwrap();
        Some(if self.in_first_phase() {
            Self::cos_anneal(max_momentum, base_momentum, pct)
        } else {
            Self::cos_anneal(base_momentum, max_momentum, pct)
        })
    }

    pub fn on_step(&mut self) {
        self.step += 1;
    }

    /// End of an epoch. ReduceLROnPlateau needs `metric` (validation loss in the seed).
    pub fn on_epoch(&mut self, metric: Option<f64>) -> Result<()> {
        self.epoch += 1;
        if let Kind::Plateau { min_mode, factor, patience, threshold, cooldown, min_lr } = self.kind {
            let m = metric.ok_or_else(|| Error::invalid("metric", "ReduceLROnPlateau needs a metric each epoch"))?;
            let better = if min_mode { m < self.best * (1.0 - threshold) } else { m > self.best * (1.0 + threshold) };
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
                if self.plateau_lr - new > 1e-8 {
                    self.plateau_lr = new;
                }
                self.cooldown_counter = cooldown;
                self.num_bad = 0;
            }
        }
        Ok(())
    }
}

/// The factor at `step`: linear between the two points around it (computed as airbench's
/// `triangle` does: slope times step plus intercept), the last factor after the last point.
fn piecewise(points: &[(u64, f64)], step: u64) -> f64 {
    let i = points.iter().rposition(|p| p.0 <= step).unwrap_or(0);
    if i + 1 >= points.len() {
        return points[points.len() - 1].1;
    }
    let ((x0, y0), (x1, y1)) = (points[i], points[i + 1]);
    let m = (y1 - y0) / (x1 - x0) as f64;
    m * step as f64 + (y0 - m * x0 as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_cosine_and_plateau() {
        let mut s = Scheduler::new(Kind::Step { step_size: 2, gamma: 0.5 }, 1.0, 0, 1.0).unwrap();
        let mut lrs = vec![];
        for _ in 0..5 {
            lrs.push(s.lr());
            s.on_epoch(None).unwrap();
        }
        assert_eq!(lrs, vec![1.0, 1.0, 0.5, 0.5, 0.25]);
        let mut c = Scheduler::new(Kind::Cosine { t_max: 4, eta_min: 0.0 }, 1.0, 0, 1.0).unwrap();
        c.epoch = 2;
        assert!((c.lr() - 0.5).abs() < 1e-12);
        let mut p = Scheduler::new(Kind::Plateau { min_mode: true, factor: 0.1, patience: 1, threshold: 1e-4, cooldown: 0, min_lr: 0.0 }, 1.0, 0, 1.0).unwrap();
        for m in [1.0, 1.0, 1.0] {
            p.on_epoch(Some(m)).unwrap();
        }
        assert!((p.lr() - 0.1).abs() < 1e-12);
        assert!(p.on_epoch(None).is_err());
    }

    #[test]
    fn one_cycle_endpoints_and_warmup() {
        let k = Kind::OneCycle { max_lr: 1.0, total_steps: 100, pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4, cycle_momentum: true, base_momentum: 0.85, max_momentum: 0.95 };
        let mut s = Scheduler::new(k, 1.0, 0, 1.0).unwrap();
        assert!((s.lr() - 0.04).abs() < 1e-12);
        assert!((s.momentum().unwrap() - 0.95).abs() < 1e-12);
        s.step = 29;
        assert!((s.lr() - 1.0).abs() < 1e-12);
        s.step = 99;
        assert!((s.lr() - 0.04 / 1e4).abs() < 1e-12);
        let mut w = Scheduler::new(Kind::Constant, 1.0, 4, 0.0).unwrap();
        let v: Vec<f64> = (0..5).map(|_| { let l = w.lr(); w.on_step(); l }).collect();
        assert_eq!(v, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn piecewise_linear_interpolates_and_holds() {
        let k = Kind::Piecewise { points: vec![(0, 0.2), (10, 1.0), (50, 0.07)] };
        let mut s = Scheduler::new(k, 2.0, 0, 1.0).unwrap();
        let mut v = vec![];
        for _ in 0..60 {
            v.push(s.lr());
            s.on_step();
        }
        assert!((v[0] - 0.4).abs() < 1e-12 && (v[5] - 1.2).abs() < 1e-12 && (v[10] - 2.0).abs() < 1e-12);
        assert!((v[30] - 2.0 * (1.0 + (0.07 - 1.0) * 0.5)).abs() < 1e-12 && (v[55] - 0.14).abs() < 1e-12);
        assert!(Scheduler::new(Kind::Piecewise { points: vec![(1, 1.0)] }, 1.0, 0, 1.0).is_err());
        assert!(Scheduler::new(Kind::Piecewise { points: vec![(0, 1.0), (0, 2.0)] }, 1.0, 0, 1.0).is_err());
    }
}
