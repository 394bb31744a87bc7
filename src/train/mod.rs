//! The training engine: one epoch of forward / loss / backward / optimizer / scheduler steps over a
//! `Loader`, evaluation with a confusion matrix, and batched prediction. The per-step loop never
//! leaves Rust; the caller's callback runs only every `log_every` steps.
pub mod dist;
pub mod lookahead;
pub mod optim;
pub mod readback;
pub mod sched;
pub mod tta;

use std::time::Instant;

use tch::{Device, Kind, Reduction, Tensor};

use crate::error::{Error, Result};
use crate::loader::{Batch, Loader};
use crate::nn::Model;
use crate::torch_state::{self, Autocast, Precision, Scope};
use dist::DistState;
use lookahead::Lookahead;
use optim::{OptKind, Optimizer};
use sched::Scheduler;

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub label_smoothing: f64,
    /// Mixed precision (autocast in bf16 or fp16; fp16 adds dynamic loss scaling), resolved for
    /// the device from the user's request (`torch_state::Amp::resolve`).
    pub precision: Precision,
    pub grad_accum: usize,
    pub grad_clip: Option<f64>,
    /// Steps between progress callbacks (and loss finiteness checks).
    pub log_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            label_smoothing: 0.0,
            precision: Precision::Float32,
            grad_accum: 1,
            grad_clip: None,
            log_every: 20,
        }
    }
}

impl TrainConfig {
    /// float16 needs loss scaling against underflow (torch's GradScaler); bfloat16 does not.
    pub fn needs_scaler(&self, device: Device) -> bool {
        self.precision == Precision::Fp16 && device.is_cuda()
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::invalid(
                "label_smoothing",
                format!("{} must be in [0, 1)", self.label_smoothing),
            ));
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
        GradScaler {
            scale: 65536.0,
            tracker: 0,
        }
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
        torch_state::no_grad(|| -> Result<bool> {
            let mut bad = Vec::with_capacity(grads.len());
            for g in grads {
                let _ = g.shallow_clone().f_mul_scalar_(1.0 / self.scale)?;
                bad.push(g.f_isfinite()?.f_logical_not()?.f_any()?);
            }
            readback::read::<bool>(&Tensor::f_stack(&bad, 0)?.f_any()?)
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
    /// SGD's momentum or Adam's beta1 now (OneCycleLR cycles it).
    pub momentum: f64,
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

/// New hyper-parameters for the engine's optimizer, written by the user between steps (a
/// torch.optim optimizer's `param_groups`) or by a schedule stepped outside the core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupSettings {
    pub lr: f64,
    pub kind: OptKind,
}

impl Default for GroupSettings {
    /// torch.optim.SGD's (its lr, 1e-3, is Adam's and AdamW's too).
    fn default() -> Self {
        GroupSettings {
            lr: 1e-3,
            kind: OptKind::Sgd(optim::Sgd::default()),
        }
    }
}

impl GroupSettings {
    /// Settings for a new optimizer, checked as torch's constructors check them.
    pub fn new(kind: OptKind, lr: f64) -> Result<GroupSettings> {
        kind.validate(lr)?;
        Ok(GroupSettings { lr, kind })
    }

    /// The check for settings written between steps. torch checks the rate's sign when the
    /// optimizer is built, not at each step: a schedule may take it below zero (a linear
    /// three-phase OneCycleLR's last step does).
    pub fn check_written(&self) -> Result<()> {
        self.kind.validate(0.0)?;
        if !self.lr.is_finite() {
            return Err(Error::invalid("lr", format!("{} must be finite", self.lr)));
        }
        Ok(())
    }
}

/// What happens at every step boundary besides the step itself. The bindings implement it over
/// Python: progress callbacks, Ctrl-C, and optimizers or per-batch schedules that live in torch.
pub trait Hooks {
    /// Every `log_every` steps and at the end; Ok(false) stops at this boundary.
    fn progress(&mut self, info: &StepInfo) -> Result<bool>;
    /// Every step, before it: Ok(true) stops (Ctrl-C); settings the user changed are returned
    /// through `settings`.
    fn poll(&mut self, settings: &mut Option<GroupSettings>) -> Result<bool>;
    /// Whether `outer_step` applies the update itself (an optimizer the core does not implement).
    fn owns_optimizer(&self) -> bool {
        false
    }
    /// After each optimizer step: with `grads` (of the parameters at `active`; None where no
    /// gradient reached one, whose `.grad` is then None), the update itself
    /// at the engine's `lr` and `momentum` (set by a fastcifar schedule); then a per-batch
    /// schedule, if any. Returns the settings now in effect, if they changed.
    fn outer_step(
        &mut self,
        _active: &[usize],
        _grads: Option<Vec<Option<Tensor>>>,
        _lr: f64,
        _momentum: f64,
    ) -> Result<Option<GroupSettings>> {
        Ok(None)
    }
    /// The learning rate the outer optimizer used at its last step (for progress reports).
    fn outer_lr(&self) -> Option<f64> {
        None
    }
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
    /// airbench's average of the weights, updated after optimizer steps.
    pub lookahead: Option<Lookahead>,
    /// Training stops (at a step boundary, the epoch ending there) once `global_step` reaches it.
    pub max_steps: Option<u64>,
}

fn single_thread_pool() -> std::sync::Arc<crate::pool::Pool> {
    static POOL: std::sync::OnceLock<std::sync::Arc<crate::pool::Pool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| std::sync::Arc::new(crate::pool::Pool::lazy(Some(1), "fastcifar-train-loader")))
        .clone()
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

/// Where an epoch's batches come from: how many steps it has, and (for a loader) every label it
/// will emit, checked once against the logits' width. Labels from elsewhere are checked by the
/// loss itself (libtorch names the target out of range).
pub struct Source<'a> {
    pub labels: Option<&'a [i64]>,
    pub steps: usize,
}

/// Labels of one batch from elsewhere (a Python loader), checked as torch's cross_entropy checks
/// them but before libtorch sees them: its errors carry C++ frames, and on CUDA an out-of-range
/// target is a device-side assert that ends the process's CUDA context. The range is read only from
/// CPU labels (all torch's DataLoader gives), so no step waits on the device for it.
fn check_batch_labels(y: &Tensor, batch: i64, num_outputs: i64, ignore_index: bool) -> Result<()> {
    if y.dim() != 1 {
        let fix = if y.dim() == 2 && y.size()[1] == 1 {
            "; these are (B, 1): squeeze them (labels.squeeze(1), or a target_transform)"
        } else {
            ""
        };
        return Err(Error::Runtime(format!(
            "labels: 0D or 1D target tensor expected, multi-target not supported (got shape {:?}{fix})",
            y.size()
        )));
    }
    if !matches!(y.kind(), Kind::Int64 | Kind::Uint8) {
        return Err(Error::Runtime(format!(
            "labels: expected scalar type Long but found {:?}: class labels are integer indices (labels.long())",
            y.kind()
        )));
    }
    if y.size()[0] != batch {
        return Err(Error::invalid(
            "labels",
            format!(
                "Expected input batch_size ({batch}) to match target batch_size ({})",
                y.size()[0]
            ),
        ));
    }
    if y.device() == Device::Cpu && batch > 0 {
        // -100 is cross_entropy's ignore_index: torch's training loss skips it, so does the engine's.
        let counted = y.to_kind(Kind::Int64);
        let mut bad = counted.lt(0).logical_or(&counted.ge(num_outputs));
        if ignore_index {
            bad = bad.logical_and(&counted.ne(-100));
        }
        if bool::try_from(bad.any())? {
            let v = i64::try_from(counted.masked_select(&bad).get(0))?;
            return Err(Error::OutOfRange(format!(
                "Target {v} is out of bounds: the model outputs {num_outputs} classes (labels must be in 0..{num_outputs})"
            )));
        }
    }
    Ok(())
}

impl Source<'_> {
    fn check_labels(&self, num_outputs: i64) -> Result<()> {
        let Some(labels) = self.labels else { return Ok(()) };
        if let Some(&bad) = labels.iter().find(|&&l| l >= num_outputs) {
            let max = labels.iter().copied().max().unwrap_or(bad);
            return Err(Error::invalid(
                "labels",
                format!("the data set has label {bad}, but the model outputs {num_outputs} classes (give it a head for {} classes)", max + 1),
            ));
        }
        Ok(())
    }
}

/// A batch onto the model's device. To CUDA the copy is queued without waiting (from pinned
/// memory it overlaps the step; from pageable memory CUDA stages it first, so the source may be
/// freed at once either way).
fn to_device(t: Tensor, d: Device) -> Tensor {
    if t.device() == d {
        t
    } else {
        let kind = t.kind();
        t.to_device_(d, kind, d.is_cuda(), false)
    }
}

/// The optimizer's parameters that require gradients now, by index, and their flags as last seen.
struct Trainable {
    active: Vec<usize>,
    params: Vec<Tensor>,
    flags: Vec<bool>,
}

impl Trainable {
    fn of(opt: &Optimizer) -> Trainable {
        let (active, params) = opt.trainable();
        Trainable {
            active,
            params,
            flags: opt.requires_grad_flags(),
        }
    }

    /// Takes a change of `requires_grad` since the last look (one flag read per parameter).
    fn refresh(&mut self, opt: &Optimizer) {
        let flags = opt.requires_grad_flags();
        if flags != self.flags {
            *self = Trainable::of(opt);
        }
    }

    /// The active parameters with a gradient each (zeros where none reached them).
    fn dense(&self, grads: &[Option<Tensor>]) -> (Vec<Tensor>, Vec<Tensor>) {
        let params: Vec<Tensor> = self.params.iter().map(Tensor::shallow_clone).collect();
        let local = self
            .active
            .iter()
            .zip(&self.params)
            .map(|(&k, p)| grads[k].as_ref().map_or_else(|| p.zeros_like(), Tensor::shallow_clone))
            .collect();
        (params, local)
    }
}

/// What one epoch holds while it runs: the running sums, on the device (read back only at log
/// steps), and the gradients of the micro-steps since the last optimizer step.
struct Epoch {
    epoch: u64,
    steps: usize,
    t0: Instant,
    loss_sum: Tensor,
    correct: Tensor,
    images: u64,
    info: StepInfo,
    /// The rate of the last optimizer step (what progress reports), before a schedule moves it.
    lr_used: f64,
    /// Looked at before every backward: a callback may freeze or unfreeze a layer mid-epoch
    /// (`requires_grad_(False)`), as it may in a plain loop.
    trainable: Trainable,
    /// Per optimizer parameter; None where no gradient reached it (an unused or frozen layer),
    /// which the update then skips, as torch.optim skips a `.grad` of None. Gradients come back
    /// from autograd as fresh tensors (torch.autograd.grad), so nothing is zeroed or accumulated
    /// into `.grad` between steps: torch's zero_grad(set_to_none=True).
    acc: Vec<Option<Tensor>>,
}

impl Epoch {
    fn start(opt: &Optimizer, epoch: u64, steps: usize, dev: Device) -> Epoch {
        Epoch {
            epoch,
            steps,
            t0: Instant::now(),
            loss_sum: Tensor::zeros([], (Kind::Float, dev)),
            correct: Tensor::zeros([], (Kind::Int64, dev)),
            images: 0,
            info: StepInfo {
                epoch,
                steps,
                ..Default::default()
            },
            lr_used: opt.lr,
            trainable: Trainable::of(opt),
            acc: (0..opt.len()).map(|_| None).collect(),
        }
    }
}

impl TrainState {
    pub fn new(opt: Optimizer, sched: Option<Scheduler>, cfg: TrainConfig, device: Device) -> Result<TrainState> {
        cfg.validate()?;
        let scaler = cfg.needs_scaler(device).then(GradScaler::default);
        Ok(TrainState {
            opt,
            sched,
            scaler,
            cfg,
            global_step: 0,
            dist: None,
            lookahead: None,
            max_steps: None,
        })
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

    /// Applies settings written outside the core (the engine's optimizer keeps its state).
    pub fn apply_settings(&mut self, s: GroupSettings) -> Result<()> {
        s.check_written()?;
        if std::mem::discriminant(&s.kind) != std::mem::discriminant(&self.opt.kind) {
            return Err(Error::invalid(
                "optimizer",
                format!(
                    "cannot turn {} into {} during training",
                    self.opt.kind.name(),
                    s.kind.name()
                ),
            ));
        }
        self.opt.kind = s.kind;
        self.opt.lr = s.lr;
        Ok(())
    }

    /// One epoch over `loader` (its epoch `epoch`: shuffle and augmentation). `hooks.poll` runs
    /// before every step (a stop is seen within one step), `hooks.progress` every `log_every`
    /// steps and at the end.
    pub fn train_epoch(
        &mut self,
        model: &mut Model,
        loader: &Loader,
        epoch: u64,
        hooks: &mut dyn Hooks,
    ) -> Result<EpochStats> {
        // On CPU the model keeps every core busy: build batches on one thread (measured about 4% more
        // images/s than a pool contending with libtorch's OpenMP threads, at the edge of this VM's
        // noise). On CUDA the loader keeps its pool.
        let loader = &loader.with_channels_last(model.wants_channels_last());
        let mut it = if model.device().is_cuda() {
            loader.iter(epoch)
        } else {
            keep_freed_memory();
            loader.iter_on(epoch, single_thread_pool())
        };
        let source = Source {
            labels: Some(loader.labels()),
            steps: loader.len(),
        };
        self.train_batches(model, &mut it, source, epoch, hooks)
    }

    /// One epoch over `batches` (a loader's, or batches from elsewhere: a Python iterable).
    /// Gradients are recorded whatever the caller's grad mode (a `torch.no_grad()` or
    /// `inference_mode()` around `fit`), and that mode is the caller's again on every exit path.
    pub fn train_batches(
        &mut self,
        model: &mut Model,
        batches: &mut dyn Iterator<Item = Result<Batch>>,
        source: Source<'_>,
        epoch: u64,
        hooks: &mut dyn Hooks,
    ) -> Result<EpochStats> {
        // A torch.autocast around fit is taken as amp would be (the forward in its dtype), and off
        // for the rest of the step: backward and the update run outside autocast, as torch advises.
        let precision = match (self.cfg.precision, torch_state::user_autocast(model.device())) {
            (Precision::Float32, Some(Kind::BFloat16)) => Precision::Bf16,
            (Precision::Float32, Some(Kind::Half)) => Precision::Fp16,
            (p, _) => p,
        };
        let no_cast = Autocast {
            device: model.device(),
            dtype: None,
        };
        torch_state::scoped(Scope::train(Some(no_cast)), || {
            self.run_batches(model, batches, source, epoch, precision, hooks)
        })
    }

    fn run_batches(
        &mut self,
        model: &mut Model,
        batches: &mut dyn Iterator<Item = Result<Batch>>,
        source: Source<'_>,
        epoch: u64,
        precision: Precision,
        hooks: &mut dyn Hooks,
    ) -> Result<EpochStats> {
        model.training = true;
        let mut ep = Epoch::start(&self.opt, epoch, source.steps, model.device());
        let mut stopped = false;
        // A stop asked for on one rank waits for the next log step, where all ranks agree on it.
        let mut stop_asked = false;
        // The schedule sets the rate when it moves (here, after each step it moves at, and at epoch
        // ends); a rate written by the user in between holds until then, as with torch's.
        self.apply_schedule();
        for i in 0..ep.steps {
            let mut settings = None;
            if !stop_asked && hooks.poll(&mut settings)? {
                stop_asked = true;
            }
            if let Some(s) = settings {
                self.apply_settings(s)?;
            }
            if stop_asked && self.dist.is_none() {
                stopped = true;
                break;
            }
            let Some(batch) = batches.next() else { break };
            let batch_loss = self.micro_step(model, batch?, i, &source, precision, &mut ep)?;
            if (i + 1) % self.cfg.grad_accum == 0 || i + 1 == ep.steps {
                self.optimizer_step(&mut ep, hooks)?;
            }
            let done = self.max_steps.is_some_and(|m| self.global_step >= m);
            if ((i + 1) % self.cfg.log_every == 0 || i + 1 == ep.steps || done)
                && self.report(&mut ep, i, &batch_loss, stop_asked, hooks)?
            {
                stopped = true;
                break;
            }
            if done {
                break;
            }
        }
        self.epoch_stats(ep, stopped, hooks)
    }

    /// The forward, the loss and the backward of batch `i`: its gradients join those of the
    /// micro-steps since the last optimizer step. The batch's loss comes back (detached).
    fn micro_step(
        &mut self,
        model: &mut Model,
        (x, y_host): Batch,
        i: usize,
        source: &Source<'_>,
        precision: Precision,
        ep: &mut Epoch,
    ) -> Result<Tensor> {
        let dev = model.device();
        let n = x.size().first().copied().unwrap_or(0);
        let (x, y) = (to_device(x, dev), to_device(y_host.shallow_clone(), dev));
        let logits = model.forward_in(&x, true, precision)?.to_kind(Kind::Float);
        if i == 0 {
            source.check_labels(logits.size()[1])?;
        }
        if source.labels.is_none() {
            check_batch_labels(&y_host, n, logits.size()[1], true)?;
        }
        let loss = logits.f_cross_entropy_loss(&y, None::<Tensor>, Reduction::Mean, -100, self.cfg.label_smoothing)?;
        torch_state::no_grad(|| {
            let _ = ep.loss_sum.shallow_clone().f_add_(&(loss.detach() * n as f64));
            let _ = ep
                .correct
                .shallow_clone()
                .f_add_(&logits.argmax(1, false).eq_tensor(&y).sum(Kind::Int64));
        });
        ep.images += n as u64;
        let batch_loss = loss.detach();
        let accum = self.cfg.grad_accum;
        let mut scaled = if accum > 1 { &loss / accum as f64 } else { loss };
        if let Some(s) = &self.scaler {
            // Not `*=`: that would scale in place the loss whose value `batch_loss` shares.
            scaled = &scaled * s.scale;
        }
        ep.trainable.refresh(&self.opt);
        if ep.trainable.params.is_empty() {
            return Ok(batch_loss);
        }
        if !scaled.requires_grad() {
            return Err(Error::Runtime(
                "element 0 of tensors does not require grad and does not have a grad_fn: the loss depends on no trainable parameter (are they all detached or frozen?)".into(),
            ));
        }
        // Undefined where a parameter does not reach the loss (an unused layer, an aux head, a
        // detached branch).
        let grads = Tensor::f_run_backward(&[&scaled], &ep.trainable.params, false, false)?;
        for (&k, g) in ep.trainable.active.iter().zip(grads) {
            if g.defined() {
                ep.acc[k] = Some(match ep.acc[k].take() {
                    None => g,
                    Some(prev) => prev + g,
                });
            }
        }
        Ok(batch_loss)
    }

    /// One optimizer step on the gradients accumulated since the last: averaged over the ranks,
    /// unscaled (fp16), clipped, applied (here or by the outer optimizer), then the schedule and
    /// the lookahead move.
    fn optimizer_step(&mut self, ep: &mut Epoch, hooks: &mut dyn Hooks) -> Result<()> {
        ep.lr_used = self.opt.lr;
        let trainable = &ep.trainable;
        // Micro-steps only accumulate locally; the collective runs once per optimizer step.
        let mut grads: Vec<Option<Tensor>> =
            std::mem::replace(&mut ep.acc, (0..self.opt.len()).map(|_| None).collect());
        if let Some(d) = &mut self.dist {
            // Every rank takes part in every bucket: a parameter no gradient reached here counts as
            // zero (DDP's find_unused_parameters=True).
            let (params, local) = trainable.dense(&grads);
            for (&k, g) in trainable.active.iter().zip(d.average(&params, &local)?) {
                grads[k] = Some(g);
            }
        }
        let present: Vec<Tensor> = grads.iter().flatten().map(Tensor::shallow_clone).collect();
        let mut skip = false;
        if let Some(s) = &mut self.scaler {
            skip = s.unscale(&present)?;
            s.update(skip);
        }
        if !skip {
            if let Some(c) = self.cfg.grad_clip {
                optim::clip_grad_norm(&present, c)?;
            }
            if hooks.owns_optimizer() {
                let of_active = trainable.active.iter().map(|&k| grads[k].take()).collect();
                hooks.outer_step(&trainable.active, Some(of_active), self.opt.lr, self.opt.momentum())?;
            } else {
                self.opt.step_grads(&grads)?;
            }
        }
        self.global_step += 1;
        if let Some(s) = &mut self.sched {
            s.on_step()?;
            if s.per_step() || s.step == s.warmup_steps {
                self.apply_schedule();
            }
        }
        if !hooks.owns_optimizer() {
            if let Some(s) = hooks.outer_step(&trainable.active, None, self.opt.lr, self.opt.momentum())? {
                self.apply_settings(s)?;
            }
        }
        if let Some(l) = &mut self.lookahead {
            l.on_step(self.global_step)?;
        }
        Ok(())
    }

    /// A log step after batch `i`: the running loss and accuracy are read back, checked for
    /// finiteness and reported. Returns whether to stop (a callback, or a stop asked for earlier);
    /// data-parallel ranks agree on it, and on a non-finite loss, so none waits for the others.
    fn report(
        &mut self,
        ep: &mut Epoch,
        i: usize,
        batch_loss: &Tensor,
        stop_asked: bool,
        hooks: &mut dyn Hooks,
    ) -> Result<bool> {
        let info = &mut ep.info;
        info.step = i + 1;
        info.images = ep.images;
        info.loss = readback::read::<f64>(&ep.loss_sum)? / ep.images as f64;
        info.accuracy = readback::read::<i64>(&ep.correct)? as f64 / ep.images as f64;
        info.seconds = ep.t0.elapsed().as_secs_f64();
        info.lr = hooks.outer_lr().unwrap_or(ep.lr_used);
        info.momentum = self.opt.momentum();
        info.batch_loss = readback::read::<f64>(batch_loss)?;
        let mut bad = !info.loss.is_finite();
        let mut stop = !bad && (!hooks.progress(info)? || stop_asked);
        if let Some(d) = &mut self.dist {
            let f = d.comm.any(&[bad, stop])?;
            (bad, stop) = (f[0], f[1]);
        }
        if bad {
            return Err(Error::NonFinite(format!(
                "the training loss became {} at epoch {}, step {}; stopped (try a lower learning rate or grad_clip)",
                if info.loss.is_finite() {
                    "NaN or inf on another rank".to_string()
                } else {
                    info.loss.to_string()
                },
                ep.epoch,
                i + 1
            )));
        }
        Ok(stop)
    }

    /// The epoch's loss and accuracy (over all ranks' samples).
    fn epoch_stats(&mut self, ep: Epoch, stopped: bool, hooks: &mut dyn Hooks) -> Result<EpochStats> {
        let (mut loss_sum, mut correct_n, mut images) = (
            readback::read::<f64>(&ep.loss_sum)?,
            readback::read::<i64>(&ep.correct)? as f64,
            ep.images,
        );
        if let Some(d) = &mut self.dist {
            let t = Tensor::from_slice(&[loss_sum, correct_n, images as f64]).to_device(ep.loss_sum.device());
            d.comm.all_reduce_sum(std::slice::from_ref(&t))?;
            let v: Vec<f64> = readback::read(&t.to_device(Device::Cpu))?;
            (loss_sum, correct_n, images) = (v[0], v[1], v[2] as u64);
        }
        let seconds = ep.t0.elapsed().as_secs_f64();
        let lr = hooks.outer_lr().unwrap_or(ep.lr_used);
        if images == 0 {
            return Ok(EpochStats {
                seconds,
                stopped,
                lr,
                ..Default::default()
            });
        }
        let loss = loss_sum / images as f64;
        if !loss.is_finite() {
            return Err(Error::NonFinite(format!(
                "the training loss became {loss} in epoch {}; stopped",
                ep.epoch
            )));
        }
        Ok(EpochStats {
            loss,
            accuracy: correct_n / images as f64,
            images,
            seconds,
            lr,
            stopped,
        })
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

/// Loss, accuracy and confusion matrix over one pass of `loader`, in eval mode, with test-time
/// augmentation at level `tta` (see `tta::logits`; 0: none).
/// `progress(done, total)` runs after every batch; Ok(false) stops with `Error::Interrupted`, and an
/// error it returns comes back as itself.
pub fn evaluate(
    model: &Model,
    loader: &Loader,
    tta: u8,
    progress: &mut dyn FnMut(usize, usize) -> Result<bool>,
) -> Result<EvalReport> {
    let source = Source {
        labels: Some(loader.labels()),
        steps: loader.len(),
    };
    let loader = &loader.with_channels_last(model.wants_channels_last());
    evaluate_batches(
        model,
        &mut loader.iter(0),
        source,
        loader.dataset().classes.len(),
        tta,
        progress,
    )
}

/// `evaluate` over batches from elsewhere; `num_classes` sizes the report when there is no batch.
pub fn evaluate_batches(
    model: &Model,
    batches: &mut dyn Iterator<Item = Result<Batch>>,
    source: Source<'_>,
    num_classes: usize,
    tta: u8,
    progress: &mut dyn FnMut(usize, usize) -> Result<bool>,
) -> Result<EvalReport> {
    tta::check_level(tta)?;
    let dev = model.device();
    let steps = source.steps;
    torch_state::no_grad(|| -> Result<EvalReport> {
        let loss_sum = Tensor::zeros([], (Kind::Double, dev));
        // The class count is the logits' width, known after the first batch.
        let mut conf: Option<(i64, Tensor)> = None;
        let mut count = 0u64;
        for (i, batch) in batches.enumerate() {
            let (x, y_host) = batch?;
            // No NaN check here: loader batches come from uint8 pixels through a finite affine.
            let (x, y) = (to_device(x, dev), to_device(y_host.shallow_clone(), dev));
            let logits = tta::logits(model, &x, tta)?.to_kind(Kind::Float);
            if source.labels.is_none() {
                // Every label counts in the confusion matrix: no ignore_index here.
                check_batch_labels(&y_host, x.size()[0], logits.size()[1], false)?;
            }
            let (nc, cm) = match &mut conf {
                Some((nc, cm)) => (*nc, cm),
                None => {
                    let nc = logits.size()[1];
                    source.check_labels(nc)?;
                    let (nc, cm) = conf.insert((nc, Tensor::zeros([nc * nc], (Kind::Int64, dev))));
                    (*nc, cm)
                }
            };
            let l = logits.f_cross_entropy_loss(&y, None::<Tensor>, Reduction::Sum, -100, 0.0)?;
            let _ = loss_sum.shallow_clone().f_add_(&l.to_kind(Kind::Double));
            let idx = &y * nc + logits.argmax(1, false);
            *cm += idx.bincount(None::<Tensor>, nc * nc);
            count += y.size()[0] as u64;
            if !progress(i + 1, steps)? {
                return Err(Error::Interrupted);
            }
        }
        let (nc, confusion) = match conf {
            Some((nc, cm)) => (nc as usize, readback::read::<Vec<i64>>(&cm.to_device(Device::Cpu))?),
            None => (num_classes, vec![0; num_classes * num_classes]),
        };
        let correct: i64 = (0..nc).map(|c| confusion[c * nc + c]).sum();
        let n = count.max(1) as f64;
        Ok(EvalReport {
            loss: readback::read::<f64>(&loss_sum)? / n,
            accuracy: correct as f64 / n,
            count,
            confusion,
            num_classes: nc,
        })
    })
}

/// Logits for a float batch (N, C, H, W), `batch_size` at a time, in eval mode, with test-time
/// augmentation at level `tta` (see `tta::logits`; 1 averages the image's and its mirror's).
pub fn predict(model: &Model, x: &Tensor, batch_size: i64, tta: u8) -> Result<Tensor> {
    if batch_size < 1 {
        return Err(Error::invalid("batch_size", "must be at least 1"));
    }
    tta::check_level(tta)?;
    model.check_input(x)?;
    model.check_finite(x)?;
    torch_state::no_grad(|| -> Result<Tensor> {
        let n = x.size()[0];
        let mut outs = Vec::new();
        let mut s = 0;
        while s < n {
            let xb = x.narrow(0, s, batch_size.min(n - s));
            outs.push(tta::logits(model, &xb, tta)?);
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
}
