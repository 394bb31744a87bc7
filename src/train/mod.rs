//! The training engine: one epoch of forward / loss / backward / optimizer / scheduler steps over a
//! `Loader`, evaluation with a confusion matrix, and batched prediction. The per-step loop never
//! leaves Rust; the caller's callback runs only every `log_every` steps.
pub mod dist;
pub mod optim;
pub mod sched;

use std::time::Instant;

use tch::{Device, Kind, Reduction, Tensor};

use crate::error::{Error, Result};
use crate::loader::Loader;
use crate::nn::Model;
use dist::DistState;
use optim::Optimizer;
use sched::Scheduler;

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub label_smoothing: f64,
    /// Mixed precision on CUDA: fp16 autocast with dynamic loss scaling.
    pub amp: bool,
    pub grad_accum: usize,
    pub grad_clip: Option<f64>,
    /// Steps between progress callbacks (and loss finiteness checks).
    pub log_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { label_smoothing: 0.0, amp: false, grad_accum: 1, grad_clip: None, log_every: 20 }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::invalid("label_smoothing", format!("{} must be in [0, 1)", self.label_smoothing)));
        }
        if self.grad_accum == 0 {
            return Err(Error::invalid("grad_accum_steps", "must be at least 1"));
        }
        if let Some(c) = self.grad_clip {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::invalid("grad_clip", format!("{c} must be a positive number")));
            }
        }
        if self.log_every == 0 {
            return Err(Error::invalid("log_every", "must be at least 1"));
        }
        Ok(())
    }
}

/// torch.cuda.amp.GradScaler's dynamic loss scale.
#[derive(Debug, Clone)]
pub struct GradScaler {
    pub scale: f64,
    pub tracker: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler { scale: 65536.0, tracker: 0 }
    }
}

impl GradScaler {
    /// Unscales the gradients in place; true if any is inf or NaN (then the step is skipped).
    /// The check is one reduction on the device over all gradients and one read of its flag: a
    /// single host synchronisation per step, not one per gradient tensor.
    fn unscale(&self, grads: &[Tensor]) -> Result<bool> {
        if grads.is_empty() {
            return Ok(false);
        }
        tch::no_grad(|| -> Result<bool> {
            let mut bad: Vec<Tensor> = Vec::with_capacity(grads.len());
            for g in grads {
                let _ = g.shallow_clone().f_mul_scalar_(1.0 / self.scale)?;
                bad.push(g.isfinite().logical_not().any());
            }
            Ok(bool::try_from(Tensor::stack(&bad, 0).any())?)
        })
    }

    fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= 0.5;
            self.tracker = 0;
        } else {
            self.tracker += 1;
            if self.tracker == 2000 {
                self.scale *= 2.0;
                self.tracker = 0;
            }
        }
    }
}

/// airbench's lookahead: an exponential moving average of the weights that the weights are reset
/// to. From epoch `start_epoch` on, every `every` optimizer steps, the first time a copy of the
/// tensors is taken; each later time `ema.lerp_(t, 1 - rho)` then `t.copy_(ema)`, with
/// `rho = decay^every * (step / total_steps)^power`. At the end of each epoch (once the average
/// exists) the tensors are set to it. `tensors`: the parameters and the floating-point buffers
/// (BatchNorm statistics), all of the module's floating-point state.
pub struct Lookahead {
    pub tensors: Vec<Tensor>,
    pub ema: Option<Vec<Tensor>>,
    pub every: u64,
    pub start_epoch: u64,
    pub decay: f64,
    pub power: f64,
    pub total_steps: u64,
}

impl Lookahead {
    pub fn new(tensors: Vec<Tensor>, every: u64, start_epoch: u64, decay: f64, power: f64, total_steps: u64) -> Result<Lookahead> {
        if every == 0 {
            return Err(Error::invalid("every", "must be at least 1 (Lookahead)"));
        }
        if total_steps == 0 {
            return Err(Error::invalid("total_steps", "must be at least 1 (Lookahead)"));
        }
        if !(0.0..=1.0).contains(&decay) || !(power >= 0.0 && power.is_finite()) {
            return Err(Error::invalid("decay", format!("decay {decay} must be in [0, 1] and power {power} >= 0 (Lookahead)")));
        }
        Ok(Lookahead { tensors, ema: None, every, start_epoch, decay, power, total_steps })
    }

    /// After optimizer step `step` (counted from 1) of epoch `epoch`.
    fn on_step(&mut self, epoch: u64, step: u64) {
        if epoch < self.start_epoch || step % self.every != 0 {
            return;
        }
        let rho = self.decay.powf(self.every as f64) * (step as f64 / self.total_steps as f64).powf(self.power);
        tch::no_grad(|| match &self.ema {
            None => self.ema = Some(self.tensors.iter().map(|t| t.detach().copy()).collect()),
            Some(ema) => {
                for (e, t) in ema.iter().zip(&self.tensors) {
                    let _ = e.shallow_clone().f_lerp_(t, 1.0 - rho);
                    let _ = t.shallow_clone().f_copy_(e);
                }
            }
        });
    }

    /// End of an epoch: the weights become the average (rho = 1).
    fn on_epoch_end(&mut self) {
        if let Some(ema) = &self.ema {
            tch::no_grad(|| {
                for (e, t) in ema.iter().zip(&self.tensors) {
                    let _ = t.shallow_clone().f_copy_(e);
                }
            });
        }
    }
}

/// What a progress callback sees.
#[derive(Debug, Clone, Default)]
pub struct StepInfo {
    pub epoch: u64,
    pub step: usize,
    pub steps: usize,
    /// Mean loss and accuracy over the epoch so far.
    pub loss: f64,
    pub accuracy: f64,
    /// The loss of the last batch alone.
    pub batch_loss: f64,
    pub images: u64,
    pub seconds: f64,
    pub lr: f64,
}

#[derive(Debug, Clone, Default)]
pub struct EpochStats {
    pub loss: f64,
    pub accuracy: f64,
    pub images: u64,
    pub seconds: f64,
    pub lr: f64,
    /// The callback asked to stop (Ctrl-C): the epoch ended early at a step boundary.
    pub stopped: bool,
}

#[derive(Debug, Clone)]
pub struct EvalReport {
    pub loss: f64,
    pub accuracy: f64,
    pub count: u64,
    /// num_classes x num_classes, row = true class, column = predicted.
    pub confusion: Vec<i64>,
    pub num_classes: usize,
}

/// Optimizer, schedule and settings: everything training carries besides the model.
pub struct TrainState {
    pub opt: Optimizer,
    pub sched: Option<Scheduler>,
    pub scaler: Option<GradScaler>,
    pub cfg: TrainConfig,
    pub global_step: u64,
    /// Data-parallel training: gradients averaged across ranks every optimizer step.
    pub dist: Option<DistState>,
    pub lookahead: Option<Lookahead>,
    /// Training stops (at a step boundary, the epoch ending there) once `global_step` reaches it.
    pub max_steps: Option<u64>,
}

fn single_thread_pool() -> Result<std::sync::Arc<rayon::ThreadPool>> {
    static POOL: std::sync::OnceLock<std::sync::Arc<rayon::ThreadPool>> = std::sync::OnceLock::new();
    if let Some(p) = POOL.get() {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "fastcifar-train-loader".into())
        .build()
        .map_err(|e| Error::invalid("loader", e.to_string()))?;
    Ok(POOL.get_or_init(|| std::sync::Arc::new(p)).clone())
}

/// CPU training allocates the same activation sizes every step. glibc's malloc hands blocks above
/// its (adaptive) mmap threshold back to the kernel when they are freed, and trims the heap top
/// above twice that, so every step page-faults and zeroes its activations afresh: measured here,
/// a fifth of the CPU time in the kernel and 0.88-0.93x the seed loop's images/s (1.15x after).
/// Keeping freed memory for reuse (up to 1 GB of free heap), as PyTorch's CUDA caching allocator
/// does on the GPU, removes that. Once per process; skipped when the user tunes malloc
/// (MALLOC_*_THRESHOLD_ or GLIBC_TUNABLES set) or sets FASTCIFAR_MALLOC_TUNING=0.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let user_tuned = ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"]
                .iter()
                .any(|k| std::env::var_os(k).is_some());
            if user_tuned || std::env::var("FASTCIFAR_MALLOC_TUNING").as_deref() == Ok("0") {
                return;
            }
            // SAFETY: mallopt only changes malloc's thresholds; it is thread-safe in glibc.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's largest allowed value
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}

/// Labels must index the model's outputs. A module does not declare its class count, so the
/// width of the first batch's logits is checked against every label, once per pass.
fn check_labels(num_outputs: i64, loader: &Loader) -> Result<()> {
    let ds = loader.dataset();
    if let Some(&bad) = ds.labels.iter().find(|&&l| l >= num_outputs) {
        return Err(Error::invalid(
            "labels",
            format!(
                "the data set has label {bad}, but the model outputs {num_outputs} classes (give it a head for {} classes)",
                ds.classes.len().max(bad as usize + 1)
            ),
        ));
    }
    Ok(())
}

fn to_device(t: Tensor, d: Device) -> Tensor {
    if t.device() == d {
        t
    } else {
        t.to_device(d)
    }
}

impl TrainState {
    pub fn new(opt: Optimizer, sched: Option<Scheduler>, cfg: TrainConfig, device: Device) -> Result<TrainState> {
        cfg.validate()?;
        let scaler = (cfg.amp && device.is_cuda()).then(GradScaler::default);
        if device.is_cuda() {
            // Fixed input shapes every step: let cuDNN pick its fastest convolution algorithms.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        Ok(TrainState { opt, sched, scaler, cfg, global_step: 0, dist: None, lookahead: None, max_steps: None })
    }

    /// Puts the schedule's learning rate (and cycled momentum) into the optimizer.
    pub fn apply_schedule(&mut self) {
        if let Some(s) = &self.sched {
            self.opt.lr = s.lr();
            if let Some(m) = s.momentum() {
                self.opt.set_momentum(m);
            }
        }
    }

    /// One epoch over `loader` (its epoch `epoch`: shuffle and augmentation). `progress` runs every
    /// `log_every` steps and at the end; returning false stops at that step boundary.
    pub fn train_epoch(&mut self, model: &mut Model, loader: &Loader, epoch: u64, progress: &mut dyn FnMut(&StepInfo) -> bool) -> Result<EpochStats> {
        model.training = true;
        let dev = model.device();
        let steps = loader.len();
        let accum = self.cfg.grad_accum;
        let autocast = self.cfg.amp && dev.is_cuda();
        let t0 = Instant::now();
        let loss_sum = Tensor::zeros([], (Kind::Float, dev));
        let correct = Tensor::zeros([], (Kind::Int64, dev));
        let mut images = 0u64;
        let mut info = StepInfo { epoch, steps, ..Default::default() };
        let mut stopped = false;
        // Gradients come back from autograd as fresh tensors (torch.autograd.grad), so nothing is
        // zeroed or accumulated into `.grad` between steps: torch's zero_grad(set_to_none=True).
        let (active, params) = self.opt.trainable();
        let mut acc: Option<Vec<Tensor>> = None;
        // On CPU the model keeps every core busy: build batches on one thread (measured about 4% more
        // images/s than a pool contending with libtorch's OpenMP threads, at the edge of this VM's
        // noise). On CUDA the loader keeps its pool.
        let mut it = if dev.is_cuda() {
            loader.iter(epoch)
        } else {
            keep_freed_memory();
            loader.iter_on(epoch, single_thread_pool()?)
        };
        for i in 0..steps {
            let Some(batch) = it.next() else { break };
            let (x, y) = batch?;
            let (x, y) = (to_device(x, dev), to_device(y, dev));
            let n = y.size()[0];
            self.apply_schedule();
            let logits = tch::autocast(autocast, || model.forward_t(&x, true))?.to_kind(Kind::Float);
            if i == 0 {
                check_labels(logits.size()[1], loader)?;
            }
            let loss = logits.f_cross_entropy_loss(&y, None::<Tensor>, Reduction::Mean, -100, self.cfg.label_smoothing)?;
            tch::no_grad(|| {
                let _ = loss_sum.shallow_clone().f_add_(&(loss.detach() * n as f64));
                let _ = correct.shallow_clone().f_add_(&logits.argmax(1, false).eq_tensor(&y).sum(Kind::Int64));
            });
            images += n as u64;
            let batch_loss = loss.detach();
            let mut scaled = if accum > 1 { &loss / accum as f64 } else { loss };
            if let Some(s) = &self.scaler {
                scaled = scaled * s.scale;
            }
            let grads = if params.is_empty() { Vec::new() } else { Tensor::f_run_backward(&[&scaled], &params, false, false)? };
            acc = Some(match acc.take() {
                None => grads,
                Some(prev) => prev.iter().zip(&grads).map(|(a, g)| a + g).collect(),
            });
            if (i + 1) % accum == 0 || i + 1 == steps {
                // Micro-steps only accumulate locally; the collective runs once per optimizer step.
                let mut grads = acc.take().unwrap_or_default();
                if let Some(d) = &mut self.dist {
                    grads = d.average(&params, &grads)?;
                }
                let mut skip = false;
                if let Some(s) = &mut self.scaler {
                    skip = s.unscale(&grads)?;
                    s.update(skip);
                }
                if !skip {
                    if let Some(c) = self.cfg.grad_clip {
                        optim::clip_grad_norm(&grads, c)?;
                    }
                    let mut all: Vec<Option<Tensor>> = (0..self.opt.len()).map(|_| None).collect();
                    for (&k, g) in active.iter().zip(grads) {
                        all[k] = Some(g);
                    }
                    self.opt.step_grads(&all)?;
                }
                self.global_step += 1;
                if let Some(s) = &mut self.sched {
                    s.on_step();
                }
                if let Some(l) = &mut self.lookahead {
                    l.on_step(epoch, self.global_step);
                }
            }
            let done = self.max_steps.is_some_and(|m| self.global_step >= m);
            if (i + 1) % self.cfg.log_every == 0 || i + 1 == steps || done {
                info.step = i + 1;
                info.images = images;
                info.loss = f64::try_from(&loss_sum)? / images as f64;
                info.accuracy = i64::try_from(&correct)? as f64 / images as f64;
                info.seconds = t0.elapsed().as_secs_f64();
                info.lr = self.opt.lr;
                info.batch_loss = f64::try_from(&batch_loss)?;
                let mut bad = !info.loss.is_finite();
                let mut stop = !bad && !progress(&info);
                if let Some(d) = &mut self.dist {
                    // Every rank must stop (or fail) at the same step, or the others would wait in
                    // the next all-reduce until the timeout.
                    let f = d.comm.any(&[bad, stop])?;
                    (bad, stop) = (f[0], f[1]);
                }
                if bad {
                    return Err(Error::NonFinite(format!(
                        "the training loss became {} at epoch {epoch}, step {}; stopped (try a lower learning rate or grad_clip)",
                        if info.loss.is_finite() { "NaN or inf on another rank".to_string() } else { info.loss.to_string() },
                        i + 1
                    )));
                }
                if stop {
                    stopped = true;
                    break;
                }
            }
            if done {
                break;
            }
        }
        drop(it);
        if let Some(l) = &mut self.lookahead {
            l.on_epoch_end();
        }
        let (mut loss_sum, mut correct_n) = (f64::try_from(&loss_sum)?, i64::try_from(&correct)? as f64);
        if let Some(d) = &mut self.dist {
            // The epoch's loss and accuracy over all ranks' samples.
            let t = Tensor::from_slice(&[loss_sum, correct_n, images as f64]).to_device(dev);
            d.comm.all_reduce_sum(std::slice::from_ref(&t))?;
            let v: Vec<f64> = Vec::try_from(t.to_device(Device::Cpu))?;
            (loss_sum, correct_n, images) = (v[0], v[1], v[2] as u64);
        }
        let seconds = t0.elapsed().as_secs_f64();
        if images == 0 {
            return Ok(EpochStats { seconds, stopped, lr: self.opt.lr, ..Default::default() });
        }
        let loss = loss_sum / images as f64;
        if !loss.is_finite() {
            return Err(Error::NonFinite(format!("the training loss became {loss} in epoch {epoch}; stopped")));
        }
        let accuracy = correct_n / images as f64;
        Ok(EpochStats { loss, accuracy, images, seconds, lr: self.opt.lr, stopped })
    }

    /// End of epoch: epoch schedules move (ReduceLROnPlateau on `metric`).
    pub fn end_epoch(&mut self, metric: Option<f64>) -> Result<()> {
        if let Some(s) = &mut self.sched {
            s.on_epoch(metric)?;
        }
        self.apply_schedule();
        Ok(())
    }
}

/// Logits with test-time augmentation, as airbench averages them. Level 0: the image alone; 1: the
/// mean of the image's and its mirror's; 2: half of level 1 plus half the mean of level 1 over two
/// one-pixel translations (up-left and down-right, reflect-padded).
pub fn tta_logits(model: &Model, x: &Tensor, level: u8) -> Result<Tensor> {
    let mirror = |x: &Tensor| -> Result<Tensor> { Ok((model.forward_t(x, false)? + model.forward_t(&x.flip([3]), false)?) * 0.5) };
    match level {
        0 => model.forward_t(x, false),
        1 => mirror(x),
        2 => {
            let (h, w) = (x.size()[2], x.size()[3]);
            let padded = x.f_reflection_pad2d([1, 1, 1, 1])?;
            let a = mirror(&padded.narrow(2, 0, h).narrow(3, 0, w))?;
            let b = mirror(&padded.narrow(2, 2, h).narrow(3, 2, w))?;
            Ok(mirror(x)? * 0.5 + (a + b) * 0.25)
        }
        l => Err(Error::invalid("tta", format!("level {l} is not 0 (none), 1 (mirror) or 2 (mirror and translate)"))),
    }
}

/// Loss, accuracy and confusion matrix over one pass of `loader`, in eval mode.
pub fn evaluate(model: &Model, loader: &Loader, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<EvalReport> {
    evaluate_tta(model, loader, 0, progress)
}

/// `evaluate` with test-time augmentation at `tta` level (see `tta_logits`).
pub fn evaluate_tta(model: &Model, loader: &Loader, tta: u8, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<EvalReport> {
    if tta > 2 {
        return Err(Error::invalid("tta", format!("level {tta} is not 0 (none), 1 (mirror) or 2 (mirror and translate)")));
    }
    let dev = model.device();
    let steps = loader.len();
    tch::no_grad(|| -> Result<EvalReport> {
        let loss_sum = Tensor::zeros([], (Kind::Double, dev));
        // The class count is the logits' width, known after the first batch.
        let mut conf: Option<(i64, Tensor)> = None;
        let mut count = 0u64;
        for (i, batch) in loader.iter(0).enumerate() {
            let (x, y) = batch?;
            // No NaN check here: loader batches come from uint8 pixels through a finite affine.
            let (x, y) = (to_device(x, dev), to_device(y, dev));
            let logits = tta_logits(model, &x, tta)?.to_kind(Kind::Float);
            let (nc, cm) = match &mut conf {
                Some((nc, cm)) => (*nc, cm),
                None => {
                    let nc = logits.size()[1];
                    check_labels(nc, loader)?;
                    let (nc, cm) = conf.insert((nc, Tensor::zeros([nc * nc], (Kind::Int64, dev))));
                    (*nc, cm)
                }
            };
            let l = logits.f_cross_entropy_loss(&y, None::<Tensor>, Reduction::Sum, -100, 0.0)?;
            let _ = loss_sum.shallow_clone().f_add_(&l.to_kind(Kind::Double));
            let idx = &y * nc + logits.argmax(1, false);
            *cm += idx.bincount(None::<Tensor>, nc * nc);
            count += y.size()[0] as u64;
            if !progress(i + 1, steps) {
                return Err(Error::Interrupted);
            }
        }
        let (nc, confusion) = match conf {
            Some((nc, cm)) => (nc as usize, Vec::<i64>::try_from(cm.to_device(Device::Cpu))?),
            None => {
                let nc = loader.dataset().classes.len();
                (nc, vec![0; nc * nc])
            }
        };
        let correct: i64 = (0..nc).map(|c| confusion[c * nc + c]).sum();
        let n = count.max(1) as f64;
        Ok(EvalReport { loss: f64::try_from(&loss_sum)? / n, accuracy: correct as f64 / n, count, confusion, num_classes: nc })
    })
}

/// Logits for a float batch (N, C, H, W), `batch_size` at a time, in eval mode, with test-time
/// augmentation at level `tta` (see `tta_logits`; 1 averages the image and its mirror).
pub fn predict(model: &Model, x: &Tensor, batch_size: i64, tta: u8) -> Result<Tensor> {
    if batch_size < 1 {
        return Err(Error::invalid("batch_size", "must be at least 1"));
    }
    if tta > 2 {
        return Err(Error::invalid("tta", format!("level {tta} is not 0 (none), 1 (mirror) or 2 (mirror and translate)")));
    }
    model.check_input(x)?;
    model.check_finite(x)?;
    tch::no_grad(|| -> Result<Tensor> {
        let n = x.size()[0];
        let mut outs = Vec::new();
        let mut s = 0;
        while s < n {
            let xb = x.narrow(0, s, batch_size.min(n - s));
            outs.push(tta_logits(model, &xb, tta)?);
            s += batch_size;
        }
        Ok(Tensor::cat(&outs, 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_scaler_unscales_and_flags_any_non_finite_gradient() {
        let s = GradScaler { scale: 4.0, tracker: 0 };
        let a = Tensor::from_slice(&[4.0f32, 8.0]);
        let b = Tensor::from_slice(&[2.0f32]);
        assert!(!s.unscale(&[a.shallow_clone(), b.shallow_clone()]).unwrap());
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![1.0, 2.0]);
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![0.5]);
        for bad in [f32::INFINITY, f32::NAN] {
            let c = Tensor::from_slice(&[1.0f32, bad]);
            assert!(s.unscale(&[Tensor::from_slice(&[1.0f32]), c]).unwrap());
        }
        assert!(!s.unscale(&[]).unwrap());
    }

    #[test]
    fn lookahead_averages_then_copies_back() {
        let w = Tensor::from_slice(&[1.0f32]);
        let mut l = Lookahead::new(vec![w.shallow_clone()], 2, 1, 0.5, 0.0, 10).unwrap();
        l.on_step(0, 2); // before start_epoch: nothing
        assert!(l.ema.is_none());
        l.on_step(1, 3); // not a multiple of `every`
        assert!(l.ema.is_none());
        l.on_step(1, 4); // first time: a copy
        let _ = w.shallow_clone().fill_(3.0);
        l.on_step(1, 6); // rho = 0.5^2 = 0.25: ema = 1 + 0.75 * (3 - 1) = 2.5, copied back
        assert_eq!(f32::try_from(&w).unwrap(), 2.5);
        let _ = w.shallow_clone().fill_(7.0);
        l.on_epoch_end();
        assert_eq!(f32::try_from(&w).unwrap(), 2.5);
        assert!(Lookahead::new(vec![], 0, 0, 0.5, 1.0, 10).is_err());
    }
}
