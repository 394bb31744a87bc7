//! airbench's lookahead: an exponential moving average of the model's floating-point state that the
//! weights are reset to every few optimizer steps, inside the training loop.
use tch::Tensor;

use crate::error::{Error, Result};

/// Every `every` optimizer steps (counted over the whole run, from 1): the first time, a copy of
/// `tensors` starts the average; each later time `ema.lerp_(t, 1 - rho)` then `t.copy_(ema)`, with
/// `rho = decay^every * (step / total_steps)^power` (small early, so the weights move freely, and
/// growing to `decay^every` at the end). At step `total_steps` the weights become the average.
/// `tensors` are all of the module's floating-point state: parameters and BatchNorm statistics.
pub struct Lookahead {
    pub tensors: Vec<Tensor>,
    /// The average, once the first update has taken it.
    pub ema: Option<Vec<Tensor>>,
    pub cfg: Config,
}

/// A lookahead's settings, checked: every rule on them lives in `Config::new`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub total_steps: u64,
    pub every: u64,
    pub decay: f64,
    pub power: f64,
}

impl Default for Config {
    /// airbench94's settings. `total_steps` (the run's length) has no default: 0 is refused.
    fn default() -> Self {
        Config {
            total_steps: 0,
            every: 5,
            decay: 0.95,
            power: 3.0,
        }
    }
}

impl Config {
    pub fn new(total_steps: u64, every: u64, decay: f64, power: f64) -> Result<Config> {
        if every == 0 {
            return Err(Error::invalid("every", "must be at least 1 (Lookahead)"));
        }
        if total_steps == 0 {
            return Err(Error::invalid("total_steps", "must be at least 1 (Lookahead)"));
        }
        if !(0.0..=1.0).contains(&decay) {
            return Err(Error::invalid(
                "decay",
                format!("{decay} must be in [0, 1] (Lookahead)"),
            ));
        }
        if !(power >= 0.0 && power.is_finite()) {
            return Err(Error::invalid(
                "power",
                format!("{power} must be a finite number >= 0 (Lookahead)"),
            ));
        }
        Ok(Config {
            total_steps,
            every,
            decay,
            power,
        })
    }
}

impl Lookahead {
    pub fn new(tensors: Vec<Tensor>, cfg: Config) -> Lookahead {
        Lookahead {
            tensors,
            ema: None,
            cfg,
        }
    }

    /// After optimizer step `step` of the run (counted from 1). Device ops only: nothing is read
    /// back to the host.
    pub fn on_step(&mut self, step: u64) -> Result<()> {
        let Config {
            total_steps,
            every,
            decay,
            power,
        } = self.cfg;
        crate::torch_state::no_grad(|| -> Result<()> {
            if step.is_multiple_of(every) {
                // Past total_steps (a longer fit) the average keeps its end-of-run weight.
                let progress = (step as f64 / total_steps as f64).min(1.0);
                let rho = decay.powf(every as f64) * progress.powf(power);
                match &self.ema {
                    None => self.ema = Some(self.tensors.iter().map(|t| t.detach().copy()).collect()),
                    Some(ema) => {
                        for (e, t) in ema.iter().zip(&self.tensors) {
                            let _ = e.shallow_clone().f_lerp_(t, 1.0 - rho)?;
                            t.shallow_clone().f_copy_(e)?;
                        }
                    }
                }
            }
            if step == total_steps {
                self.copy_back()?;
            }
            Ok(())
        })
    }

    /// The weights become the average (if it exists yet).
    fn copy_back(&self) -> Result<()> {
        if let Some(ema) = &self.ema {
            for (e, t) in ema.iter().zip(&self.tensors) {
                t.shallow_clone().f_copy_(e)?;
            }
        }
        Ok(())
    }

    /// Replaces the average (a checkpoint's), moved to the tensors' devices and dtypes; shapes must
    /// match the tensors'.
    pub fn set_average(&mut self, ema: Option<Vec<Tensor>>) -> Result<()> {
        self.ema = match ema {
            None => None,
            Some(ts) => {
                let fits =
                    ts.len() == self.tensors.len() && ts.iter().zip(&self.tensors).all(|(a, b)| a.size() == b.size());
                if !fits {
                    return Err(Error::invalid(
                        "lookahead_state",
                        format!(
                            "{} tensors that do not match the model's {} floating-point tensors",
                            ts.len(),
                            self.tensors.len()
                        ),
                    ));
                }
                let moved = ts
                    .iter()
                    .zip(&self.tensors)
                    .map(|(a, b)| a.f_to_device(b.device())?.f_to_kind(b.kind()));
                Some(moved.collect::<std::result::Result<_, _>>()?)
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_then_copies_back() {
        let w = Tensor::from_slice(&[1.0f32]);
        let mut l = Lookahead::new(vec![w.shallow_clone()], Config::new(10, 2, 0.5, 0.0).unwrap());
        l.on_step(1).unwrap(); // not a multiple of `every`
        assert!(l.ema.is_none());
        l.on_step(2).unwrap(); // the first time: a copy
        let _ = w.shallow_clone().fill_(3.0);
        l.on_step(4).unwrap(); // rho = 0.5^2 = 0.25: ema = 1 + 0.75 * (3 - 1) = 2.5, copied back
        assert_eq!(f32::try_from(&w).unwrap(), 2.5);
        let _ = w.shallow_clone().fill_(7.0);
        l.on_step(9).unwrap(); // neither an update nor the end
        assert_eq!(f32::try_from(&w).unwrap(), 7.0);
        l.on_step(10).unwrap(); // an update (rho 0.25: 2.5 + 0.75 * 4.5 = 5.875), then the end: the average
        assert_eq!(f32::try_from(&w).unwrap(), 5.875);
        assert!(Config::new(10, 0, 0.5, 1.0)
            .unwrap_err()
            .to_string()
            .starts_with("every"));
        assert!(Config::new(10, 1, 1.5, 1.0)
            .unwrap_err()
            .to_string()
            .starts_with("decay"));
        assert!(Config::new(0, 1, 0.5, 1.0)
            .unwrap_err()
            .to_string()
            .starts_with("total_steps"));
        let short = l.set_average(Some(vec![])).unwrap_err().to_string();
        assert!(short.contains("do not match the model's 1"), "{short}");
    }
}
