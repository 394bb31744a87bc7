//! Optimizers written over tensor ops, following `torch.optim`'s single-tensor update rules step
//! for step, with their state in tensors we own (so it saves, loads and moves with the model).
use tch::{Kind, Tensor};

use super::sched::Kind as Schedule;
use crate::error::{Error, Result};

/// torch.optim.SGD's settings; `Default` gives torch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

/// torch.optim.Adam's settings; `Default` gives torch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// torch.optim.AdamW's settings: Adam's, with AdamW's own default weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW(pub Adam);

impl Default for AdamW {
    fn default() -> Self {
        AdamW(Adam {
            weight_decay: 1e-2,
            ..Adam::default()
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptKind {
    Sgd(Sgd),
    /// Adam with L2 weight decay added to the gradient (torch.optim.Adam).
    Adam(Adam),
    /// Adam with decoupled weight decay (torch.optim.AdamW).
    AdamW(AdamW),
}

impl OptKind {
    /// The same optimizer with a parameter group's weight decay in place of its own.
    pub fn with_weight_decay(self, w: f64) -> OptKind {
        match self {
            OptKind::Sgd(s) => OptKind::Sgd(Sgd { weight_decay: w, ..s }),
            OptKind::Adam(a) => OptKind::Adam(Adam { weight_decay: w, ..a }),
            OptKind::AdamW(AdamW(a)) => OptKind::AdamW(AdamW(Adam { weight_decay: w, ..a })),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OptKind::Sgd(_) => "SGD",
            OptKind::Adam(_) => "Adam",
            OptKind::AdamW(_) => "AdamW",
        }
    }

    pub fn validate(&self, lr: f64) -> Result<()> {
        let bad = |n: &str, m: String| Err(Error::invalid(n, format!("{m} ({})", self.name())));
        // NaN is below every bound, as it fails torch's `0.0 <= x` checks.
        let below = |v: f64, lo: f64| v.is_nan() || v < lo;
        if !lr.is_finite() || lr < 0.0 {
            return bad("lr", format!("{lr} must be a finite number >= 0"));
        }
        match *self {
            OptKind::Sgd(Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
            }) => {
                if below(momentum, 0.0) {
                    return bad("momentum", format!("{momentum} must be >= 0"));
                }
                if below(weight_decay, 0.0) {
                    return bad("weight_decay", format!("{weight_decay} must be >= 0"));
                }
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return bad("nesterov", "needs momentum > 0 and dampening = 0".into());
                }
            }
            OptKind::Adam(Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            })
            | OptKind::AdamW(AdamW(Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            })) => {
                if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
                    return bad("betas", format!("({beta1}, {beta2}) must be in [0, 1)"));
                }
                if below(eps, 0.0) {
                    return bad("eps", format!("{eps} must be >= 0"));
                }
                if below(weight_decay, 0.0) {
                    return bad("weight_decay", format!("{weight_decay} must be >= 0"));
                }
            }
        }
        Ok(())
    }
}

/// Per-parameter state: torch's `step`, and `momentum_buffer` or `exp_avg` / `exp_avg_sq`.
#[derive(Debug)]
pub struct ParamState {
    pub step: f64,
    pub buf1: Option<Tensor>,
    pub buf2: Option<Tensor>,
}

pub struct Optimizer {
    pub kind: OptKind,
    pub lr: f64,
    /// The learning rate the optimizer was made with (schedulers scale from it).
    pub initial_lr: f64,
    params: Vec<Tensor>,
    pub state: Vec<Option<ParamState>>,
    /// Parameter groups, per parameter: its rate as a multiple of `lr` (a schedule moves `lr`, and
    /// every group keeps its multiple, as torch's schedules scale each group's rate) and its
    /// group's weight decay (None: the optimizer's). See `set_groups`.
    lr_scale: Vec<f64>,
    weight_decay: Vec<Option<f64>>,
    /// The update's arithmetic: None chooses by device (torch.optim's rounding, float64-exact, on
    /// the CPU; plain float32 tensor ops elsewhere); Some(true) forces float32, Some(false) exact.
    pub fast_math: Option<bool>,
}

impl Optimizer {
    pub fn new(kind: OptKind, lr: f64, params: Vec<Tensor>) -> Result<Optimizer> {
        kind.validate(lr)?;
        let n = params.len();
        Ok(Optimizer {
            kind,
            lr,
            initial_lr: lr,
            params,
            state: (0..n).map(|_| None).collect(),
            lr_scale: vec![1.0; n],
            weight_decay: vec![None; n],
            fast_math: None,
        })
    }

    /// Sets the parameter groups: per parameter, its rate as a multiple of `lr` and its weight
    /// decay (None: the optimizer's). A group's rate stays a fixed multiple of the optimizer's, so
    /// only a `schedule` that multiplies the rate by a factor (see `sched::Kind::scales_rate`)
    /// gives each group torch's rate when the multiples differ.
    pub fn set_groups(
        &mut self,
        lr_scale: Vec<f64>,
        weight_decay: Vec<Option<f64>>,
        schedule: Option<&Schedule>,
    ) -> Result<()> {
        let n = self.params.len();
        if lr_scale.len() != n || weight_decay.len() != n {
            return Err(Error::invalid(
                "param_groups",
                format!(
                    "{} learning rates and {} weight decays for {n} parameters",
                    lr_scale.len(),
                    weight_decay.len()
                ),
            ));
        }
        if let Some(s) = lr_scale.iter().find(|s| !(**s >= 0.0 && s.is_finite())) {
            return Err(Error::invalid(
                "param_groups",
                format!("a group's lr is {s} times the optimizer's; it must be a finite number >= 0"),
            ));
        }
        if let Some(w) = weight_decay.iter().flatten().find(|w| !(**w >= 0.0 && w.is_finite())) {
            return Err(Error::invalid(
                "weight_decay",
                format!("{w} must be a finite number >= 0 (parameter group)"),
            ));
        }
        if let Some(k) = schedule.filter(|k| !k.scales_rate()) {
            if lr_scale.iter().any(|&s| s != lr_scale[0]) {
                return Err(Error::invalid(
                    "scheduler",
                    format!(
                        "{} does not scale every group's rate by one factor, so groups with different rates would \
                         not get torch's rates; use torch.optim.SGD / Adam / AdamW with these groups and \
                         torch.optim.lr_scheduler (fastcifar.Trainer takes both)",
                        k.name()
                    ),
                ));
            }
        }
        self.lr_scale = lr_scale;
        self.weight_decay = weight_decay;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Sets SGD's momentum or Adam's beta1 (OneCycleLR cycles it).
    pub fn set_momentum(&mut self, m: f64) {
        match &mut self.kind {
            OptKind::Sgd(s) => s.momentum = m,
            OptKind::Adam(a) | OptKind::AdamW(AdamW(a)) => a.beta1 = m,
        }
    }

    pub fn momentum(&self) -> f64 {
        match self.kind {
            OptKind::Sgd(s) => s.momentum,
            OptKind::Adam(a) | OptKind::AdamW(AdamW(a)) => a.beta1,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// The parameters that currently require gradients (frozen ones do not), by index.
    pub fn trainable(&self) -> (Vec<usize>, Vec<Tensor>) {
        self.params
            .iter()
            .enumerate()
            .filter(|(_, p)| p.requires_grad())
            .map(|(i, p)| (i, p.shallow_clone()))
            .unzip()
    }

    /// Each parameter's `requires_grad`, in order.
    pub fn requires_grad_flags(&self) -> Vec<bool> {
        self.params.iter().map(Tensor::requires_grad).collect()
    }

    /// One update from the parameters' `.grad` fields (as after `loss.backward()`).
    pub fn step(&mut self) -> Result<()> {
        let grads: Vec<Option<Tensor>> = self
            .params
            .iter()
            .map(|p| Some(p.grad()).filter(|g| g.defined()))
            .collect();
        self.step_grads(&grads)
    }

    /// One update of every parameter given a gradient (`grads[i]` for parameter i; None skips it,
    /// as torch skips parameters whose `.grad` is None).
    /// Each line mirrors `torch.optim`'s single-tensor code, with the same rounding, so that
    /// trajectories match PyTorch's bit for bit on the same kernels. On a GPU (see `fast_math`) the
    /// same lines run as plain float32 tensor ops: the exact rounding's float64 round trips and
    /// per-element loops are pure cost there, and the results agree with torch.optim to float32
    /// rounding, not bit for bit.
    pub fn step_grads(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        let base_lr = self.lr;
        crate::torch_state::no_grad(|| -> Result<()> {
            let params = self.params.iter_mut().zip(self.state.iter_mut()).zip(grads);
            for (i, ((p, st), g)) in params.enumerate() {
                let Some(g) = g else { continue };
                let g = g.shallow_clone();
                let st = st.get_or_insert_with(|| ParamState {
                    step: 0.0,
                    buf1: None,
                    buf2: None,
                });
                // lr * 1.0 is lr exactly, but skipping it says so: one group keeps torch's bits.
                let scale = self.lr_scale[i];
                let lr = if scale == 1.0 { base_lr } else { base_lr * scale };
                let kind = self.weight_decay[i].map_or(self.kind, |w| self.kind.with_weight_decay(w));
                let fast = self.fast_math.unwrap_or(p.device() != tch::Device::Cpu);
                match kind {
                    OptKind::Sgd(Sgd {
                        momentum,
                        dampening,
                        nesterov,
                        weight_decay,
                    }) => {
                        // grad = grad.add(param, alpha=weight_decay)
                        let mut d = if weight_decay != 0.0 {
                            add_alpha(&g, p, weight_decay, fast)?
                        } else {
                            g.shallow_clone()
                        };
                        if momentum != 0.0 {
                            let buf = match st.buf1.take() {
                                None => d.detach().copy(),
                                Some(mut b) => {
                                    // buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                                    let _ = b.f_mul_scalar_(momentum)?;
                                    add_alpha(&b, &d, 1.0 - dampening, fast)?
                                }
                            };
                            // nesterov: grad = grad.add(buf, alpha=momentum)
                            d = if nesterov {
                                add_alpha(&d, &buf, momentum, fast)?
                            } else {
                                buf.shallow_clone()
                            };
                            st.buf1 = Some(buf);
                        }
                        st.step += 1.0;
                        // param.add_(grad, alpha=-lr)
                        if fast {
                            let _ = p.f_add_(&(d * -lr))?;
                        } else {
                            p.f_copy_(&add_alpha(p, &d, -lr, false)?)?;
                        }
                    }
                    OptKind::Adam(Adam {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                    })
                    | OptKind::AdamW(AdamW(Adam {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                    })) => {
                        let decoupled = matches!(kind, OptKind::AdamW(_));
                        if decoupled && weight_decay != 0.0 {
                            let _ = p.f_mul_scalar_(1.0 - lr * weight_decay)?;
                        }
                        let g = if !decoupled && weight_decay != 0.0 {
                            add_alpha(&g, p, weight_decay, fast)?
                        } else {
                            g
                        };
                        st.step += 1.0;
                        // exp_avg.lerp_(grad, 1 - beta1)
                        let m = st.buf1.get_or_insert_with(|| p.zeros_like());
                        let _ = m.f_lerp_(&g, 1.0 - beta1)?;
                        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2):
                        // ATen computes fma(value * t1, t2, self), in place.
                        let v = st.buf2.get_or_insert_with(|| p.zeros_like());
                        let _ = v.f_mul_scalar_(beta2)?;
                        addcmul_(v, &g, 1.0 - beta2, fast)?;
                        let bc1 = 1.0 - beta1.powf(st.step);
                        let bc2 = 1.0 - beta2.powf(st.step);
                        let step_size = lr / bc1;
                        // denom = (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps)
                        let mut denom = v.f_sqrt()?;
                        let _ = denom.f_div_scalar_(bc2.sqrt())?;
                        let _ = denom.f_add_scalar_(eps)?;
                        // param.addcdiv_(exp_avg, denom, value=-step_size): self + (value * t1) / t2
                        let mut upd = &*m * (-step_size);
                        let _ = upd.f_div_(&denom)?;
                        let _ = p.f_add_(&upd)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Moves the state tensors (after the model moved).
    pub fn to_device(&mut self, device: tch::Device) {
        for s in self.state.iter_mut().flatten() {
            for b in [&mut s.buf1, &mut s.buf2].into_iter().flatten() {
                *b = b.to_device(device);
            }
        }
    }

    /// Names of the state buffers, as torch.optim writes them.
    pub fn buffer_names(&self) -> (&'static str, Option<&'static str>) {
        match self.kind {
            OptKind::Sgd(_) => ("momentum_buffer", None),
            _ => ("exp_avg", Some("exp_avg_sq")),
        }
    }

    /// Replaces the state of parameter `i` (loading a state dict); shapes must match.
    pub fn set_state(&mut self, i: usize, step: f64, buf1: Option<Tensor>, buf2: Option<Tensor>) -> Result<()> {
        let p = self.params.get(i).ok_or_else(|| {
            Error::invalid(
                "optimizer_state_dict",
                format!("state for parameter {i}, but the optimizer has {}", self.params.len()),
            )
        })?;
        for b in [&buf1, &buf2].into_iter().flatten() {
            if b.size() != p.size() {
                return Err(Error::invalid(
                    "optimizer_state_dict",
                    format!(
                        "state of parameter {i} has shape {:?}, the parameter {:?}",
                        b.size(),
                        p.size()
                    ),
                ));
            }
        }
        let dev = p.device();
        let mv = |b: Option<Tensor>| b.map(|t| t.to_device(dev).to_kind(Kind::Float));
        self.state[i] = Some(ParamState {
            step,
            buf1: mv(buf1),
            buf2: mv(buf2),
        });
        Ok(())
    }
}

/// `a.add(b, alpha=alpha)` as ATen computes it: one fused multiply-add per element, with alpha
/// rounded to float first; `fast`: plain tensor ops in the tensors' precision.
fn add_alpha(a: &Tensor, b: &Tensor, alpha: f64, fast: bool) -> Result<Tensor> {
    if alpha == 1.0 {
        return Ok(a.f_add(b)?);
    }
    if fast {
        return Ok(a.f_add(&(b * alpha))?);
    }
    fused(a, b, alpha as f32)
}

/// `v.addcmul_(g, g, value)` in place, as ATen computes it: `fma(value * g, g, v)` per element;
/// `fast`: plain tensor ops in the tensors' precision.
fn addcmul_(v: &mut Tensor, g: &Tensor, value: f64, fast: bool) -> Result<()> {
    if fast {
        let _ = v.f_addcmul_(g, &(g * value))?;
        return Ok(());
    }
    let value = value as f32;
    let cpu_f32 = |t: &Tensor| t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous();
    #[cfg(target_arch = "x86_64")]
    if cpu_f32(v) && cpu_f32(g) && v.size() == g.size() && std::is_x86_feature_detected!("fma") {
        let n = v.numel();
        // SAFETY: two distinct contiguous f32 CPU buffers of n elements; v is written in place.
        unsafe {
            let vs = std::slice::from_raw_parts_mut(v.data_ptr() as *mut f32, n);
            let gs = std::slice::from_raw_parts(g.data_ptr() as *const f32, n);
            addcmul_kernel(vs, gs, value);
        }
        return Ok(());
    }
    let d = |t: &Tensor| t.f_to_kind(Kind::Double);
    let t1 = d(&g.f_mul_scalar(value as f64)?)?;
    let r = d(v)?.f_add(&t1.f_mul(&d(g)?)?)?.f_to_kind(v.kind())?;
    v.f_copy_(&r)?;
    Ok(())
}

/// `a + b * s` rounded once. On CPU with FMA instructions: a direct loop over the float buffers
/// (what ATen's kernels do). Elsewhere: in f64, where the product of two floats is exact, rounded
/// once more to f32 (double-rounding ties aside, the same result). Single-threaded on purpose:
/// these are memory-bound, and a second thread pool would fight OpenMP's spinning workers.
fn fused(a: &Tensor, b: &Tensor, s: f32) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous();
    #[cfg(target_arch = "x86_64")]
    if cpu_f32(a) && cpu_f32(b) && a.size() == b.size() && std::is_x86_feature_detected!("fma") {
        let out = a.f_empty_like()?;
        let n = a.numel();
        // SAFETY: three distinct contiguous f32 CPU buffers of n elements; `out` is fresh.
        unsafe {
            let o = std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, n);
            let av = std::slice::from_raw_parts(a.data_ptr() as *const f32, n);
            let bv = std::slice::from_raw_parts(b.data_ptr() as *const f32, n);
            fma_scalar_kernel(o, av, bv, s);
        }
        return Ok(out);
    }
    let d = |t: &Tensor| t.f_to_kind(Kind::Double);
    Ok(d(a)?.f_add(&(d(b)? * s as f64))?.f_to_kind(a.kind())?)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fma_scalar_kernel(out: &mut [f32], a: &[f32], b: &[f32], s: f32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = y.mul_add(s, x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn addcmul_kernel(v: &mut [f32], g: &[f32], value: f32) {
    for (o, &x) in v.iter_mut().zip(g) {
        *o = (value * x).mul_add(x, *o);
    }
}

/// Scales gradients so that their global 2-norm is at most `max_norm`, as
/// torch.nn.utils.clip_grad_norm_ does it: the coefficient `min(max_norm / (norm + 1e-6), 1)` is a
/// tensor on the device that every gradient is multiplied by, so no step waits to read the norm.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<()> {
    if grads.is_empty() {
        return Ok(());
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    // torch: `max_norm / (total_norm + 1e-6)` is Tensor.__rtruediv__, `reciprocal() * max_norm`.
    let coef = total
        .f_add_scalar(1e-6)?
        .f_reciprocal()?
        .f_mul_scalar(max_norm)?
        .f_clamp_max(1.0)?;
    crate::torch_state::no_grad(|| -> Result<()> {
        for g in grads {
            let _ = g.shallow_clone().f_mul_(&coef)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn sgd_momentum_matches_hand_computation() {
        let p = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut o = Optimizer::new(
            OptKind::Sgd(Sgd {
                momentum: 0.9,
                ..Sgd::default()
            }),
            0.1,
            vec![p.shallow_clone()],
        )
        .unwrap();
        for _ in 0..2 {
            o.zero_grad();
            (&p * &p).sum(Kind::Float).backward(); // grad = 2p
            o.step().unwrap();
        }
        // step 1: buf = 2p0 = [2,4], p1 = p0 - 0.1 buf = [0.8, 1.6]
        // step 2: g = [1.6, 3.2], buf = 0.9*[2,4] + g = [3.4, 6.8], p2 = [0.46, 0.92]
        let v: Vec<f32> = Vec::try_from(p.detach()).unwrap();
        assert!((v[0] - 0.46).abs() < 1e-6 && (v[1] - 0.92).abs() < 1e-6, "{v:?}");
        assert_eq!(o.state[0].as_ref().unwrap().step, 2.0);
    }

    #[test]
    fn invalid_hyperparameters_are_named() {
        let k = OptKind::Adam(Adam {
            beta1: 1.0,
            ..Adam::default()
        });
        assert!(k.validate(1e-3).unwrap_err().to_string().starts_with("betas"));
        assert!(OptKind::Sgd(Sgd {
            nesterov: true,
            ..Sgd::default()
        })
        .validate(0.1)
        .is_err());
        let e = Optimizer::new(k, -1.0, vec![Tensor::zeros([1], (Kind::Float, Device::Cpu))])
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("lr"));
    }
}
