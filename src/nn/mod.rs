//! Models through libtorch. Every parameter and buffer is registered under the name PyTorch gives
//! it, in PyTorch's registration order, so `state_dict()` keys, shapes and order, and the order of
//! `parameters()` (which optimizer state dicts index), match the equivalent `nn.Module` exactly.
//!
//! Layers hold shallow clones of the registered tensors (the same TensorImpl); moving a model to
//! another device swaps each tensor's data in place, as `param.data = ...` does in PyTorch.
mod archs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tch::{Device, Kind, Tensor};

pub use archs::Arch;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Param,
    Buffer,
}

pub struct Entry {
    pub name: String,
    pub tensor: Tensor,
    pub role: Role,
}

/// The registered tensors of a model, in state_dict order.
#[derive(Default)]
pub struct Params {
    pub entries: Vec<Entry>,
    /// Shared by every BatchNorm2d of the model (SyncBatchNorm when set).
    pub bn_sync: BnSync,
}

/// Batch statistics shared across data-parallel processes (SyncBatchNorm). The core cannot talk to
/// other processes itself: the Python bindings implement this on torch.distributed. `forward` must
/// return the normalised batch with its autograd history (its backward reduces across ranks too)
/// and update the running statistics in place.
pub trait BatchNormSync: Send + Sync {
    #[allow(clippy::too_many_arguments)]
    fn forward(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, running_mean: &Tensor, running_var: &Tensor, momentum: f64, eps: f64)
        -> Result<Tensor>;
}

/// The model-wide SyncBatchNorm hook. `Net::forward` cannot fail, so a failed collective is parked
/// here, later BatchNorm layers of that forward stay local (no second wait for a dead peer), and
/// `Model::forward_t` returns the error.
#[derive(Default, Clone)]
pub struct BnSync(Arc<BnSyncSlot>);

#[derive(Default)]
struct BnSyncSlot {
    hook: RwLock<Option<Arc<dyn BatchNormSync>>>,
    error: Mutex<Option<Error>>,
}

impl BnSync {
    fn hook(&self) -> Option<Arc<dyn BatchNormSync>> {
        self.0.hook.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, hook: Option<Arc<dyn BatchNormSync>>) {
        *self.0.hook.write().unwrap_or_else(|e| e.into_inner()) = hook;
    }
    fn error_slot(&self) -> std::sync::MutexGuard<'_, Option<Error>> {
        self.0.error.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// PyTorch's default init for Conv2d / Linear (kaiming_uniform with a = sqrt(5)): U(-1/sqrt(fan_in), ..).
fn default_uniform(dims: &[i64], fan_in: i64) -> Tensor {
    let b = 1.0 / (fan_in as f64).sqrt();
    Tensor::empty(dims, (Kind::Float, Device::Cpu)).uniform_(-b, b)
}

impl Params {
    fn add(&mut self, name: String, t: Tensor, role: Role) -> Tensor {
        let t = if role == Role::Param { t.set_requires_grad(true) } else { t };
        let handle = t.shallow_clone();
        self.entries.push(Entry { name, tensor: t, role });
        handle
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The trainable tensors, in `parameters()` order.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.entries.iter().filter(|e| e.role == Role::Param).map(|e| e.tensor.shallow_clone()).collect()
    }

    pub fn num_parameters(&self, trainable_only: bool) -> i64 {
        self.entries
            .iter()
            .filter(|e| e.role == Role::Param && (!trainable_only || e.tensor.requires_grad()))
            .map(|e| e.tensor.numel() as i64)
            .sum()
    }
}

pub struct Conv2d {
    pub w: Tensor,
    pub b: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(p: &mut Params, name: &str, cin: i64, cout: i64, k: i64, stride: i64, padding: i64, bias: bool) -> Self {
        let fan_in = cin * k * k;
        let w = p.add(format!("{name}.weight"), default_uniform(&[cout, cin, k, k], fan_in), Role::Param);
        let b = bias.then(|| p.add(format!("{name}.bias"), default_uniform(&[cout], fan_in), Role::Param));
        Conv2d { w, b, stride, padding }
    }

    /// torchvision's ResNet init: kaiming_normal(mode="fan_out", nonlinearity="relu").
    pub fn kaiming_fan_out(&self) {
        let s = self.w.size();
        let fan_out = s[0] * s[2] * s[3];
        tch::no_grad(|| {
            let _ = self.w.shallow_clone().normal_(0.0, (2.0 / fan_out as f64).sqrt());
        });
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.w, self.b.as_ref(), [self.stride], [self.padding], [1], 1)
    }
}

pub struct BatchNorm2d {
    w: Tensor,
    b: Tensor,
    mean: Tensor,
    var: Tensor,
    tracked: Tensor,
    sync: BnSync,
}

impl BatchNorm2d {
    pub fn new(p: &mut Params, name: &str, c: i64) -> Self {
        let w = p.add(format!("{name}.weight"), Tensor::ones([c], (Kind::Float, Device::Cpu)), Role::Param);
        let b = p.add(format!("{name}.bias"), Tensor::zeros([c], (Kind::Float, Device::Cpu)), Role::Param);
        let mean = p.add(format!("{name}.running_mean"), Tensor::zeros([c], (Kind::Float, Device::Cpu)), Role::Buffer);
        let var = p.add(format!("{name}.running_var"), Tensor::ones([c], (Kind::Float, Device::Cpu)), Role::Buffer);
        let tracked = p.add(format!("{name}.num_batches_tracked"), Tensor::zeros([], (Kind::Int64, Device::Cpu)), Role::Buffer);
        BatchNorm2d { w, b, mean, var, tracked, sync: p.bn_sync.clone() }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            // PyTorch counts batches in training mode (momentum 0.1 does not use the count).
            tch::no_grad(|| {
                let _ = self.tracked.shallow_clone().f_add_scalar_(1);
            });
            if let Some(hook) = self.sync.hook() {
                let mut parked = self.sync.error_slot();
                if parked.is_none() {
                    match hook.forward(x, &self.w, &self.b, &self.mean, &self.var, 0.1, 1e-5) {
                        Ok(y) => return y,
                        Err(e) => *parked = Some(e),
                    }
                }
            }
        }
        x.batch_norm(Some(&self.w), Some(&self.b), Some(&self.mean), Some(&self.var), train, 0.1, 1e-5, true)
    }
}

pub struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

impl Linear {
    pub fn new(p: &mut Params, name: &str, fin: i64, fout: i64, bias: bool) -> Self {
        let w = p.add(format!("{name}.weight"), default_uniform(&[fout, fin], fin), Role::Param);
        let b = bias.then(|| p.add(format!("{name}.bias"), default_uniform(&[fout], fin), Role::Param));
        Linear { w, b }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, self.b.as_ref())
    }
}

/// A network: the forward pass over its layers, plus where its classifier head is.
pub trait Net: Send {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor;
    /// The state_dict prefix of the final Linear layer.
    fn head_name(&self) -> &'static str {
        "fc"
    }
    fn head_mut(&mut self) -> &mut Linear;
    /// (H, W) the network accepts; None for any size.
    fn input_hw(&self) -> Option<(i64, i64)> {
        None
    }
}

pub struct Model {
    pub arch: Arch,
    pub params: Params,
    net: Box<dyn Net>,
    device: Device,
    pub training: bool,
}

impl Model {
    /// Builds `arch` with PyTorch's default initialisation, drawn from libtorch's global generator
    /// (so `torch.manual_seed` makes it repeatable).
    pub fn new(arch: Arch) -> Result<Model> {
        arch.validate()?;
        let mut params = Params::default();
        let net = tch::no_grad(|| arch.build(&mut params));
        Ok(Model { arch, params, net, device: Device::Cpu, training: true })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn num_classes(&self) -> i64 {
        self.arch.num_classes()
    }

    /// Moves every parameter and buffer, keeping their identity (and requires_grad).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        if device == self.device {
            return Ok(());
        }
        tch::no_grad(|| -> Result<()> {
            for e in &mut self.params.entries {
                let moved = e.tensor.f_to_device(device)?;
                e.tensor.f_set_data(&moved)?;
            }
            Ok(())
        })?;
        self.device = device;
        Ok(())
    }

    /// Checks a batch before it reaches libtorch, so mistakes get a message, not a C++ trace.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        if s.len() != 4 {
            return Err(Error::invalid("x", format!("expected a (N, C, H, W) batch, got shape {s:?}")));
        }
        if s[1] != 3 {
            return Err(Error::invalid("x", format!("expected 3 channels, got {} (shape {s:?})", s[1])));
        }
        if let Some((h, w)) = self.net.input_hw() {
            if (s[2], s[3]) != (h, w) {
                return Err(Error::invalid("x", format!("{} takes {h}x{w} images, got {}x{}", self.arch.name(), s[2], s[3])));
            }
        }
        if !matches!(x.kind(), Kind::Float | Kind::Half | Kind::BFloat16) {
            let hint = if x.kind() == Kind::Uint8 { "; convert uint8 images with ToTensor / Normalize first" } else { "" };
            return Err(Error::invalid("x", format!("expected float32 (or float16 / bfloat16), got {:?}{hint}", x.kind())));
        }
        if x.device() != self.device {
            return Err(Error::invalid("x", format!("is on {:?} but the model is on {:?}", x.device(), self.device)));
        }
        if s[0] == 0 {
            return Err(Error::invalid("x", "empty batch"));
        }
        Ok(())
    }

    /// Refuses NaN / inf in a batch (one reduction; the training loop relies on its loss check).
    pub fn check_finite(&self, x: &Tensor) -> Result<()> {
        if !bool::try_from(x.f_isfinite()?.f_all()?)? {
            return Err(Error::invalid("x", "contains NaN or inf values"));
        }
        Ok(())
    }

    /// Logits. `train` selects BatchNorm batch statistics and active dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let x = if x.kind() == Kind::Float { x.shallow_clone() } else { x.to_kind(Kind::Float) };
        let y = self.net.forward(&x, train);
        if let Some(e) = self.params.bn_sync.error_slot().take() {
            return Err(e);
        }
        Ok(y)
    }

    /// Sets (or clears) the SyncBatchNorm hook that every BatchNorm layer uses in training mode.
    pub fn set_batch_norm_sync(&self, hook: Option<Arc<dyn BatchNormSync>>) {
        self.params.bn_sync.set(hook);
        self.params.bn_sync.error_slot().take();
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, self.training)
    }

    /// Named copies of every parameter and buffer, detached, in state_dict order.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        tch::no_grad(|| self.params.entries.iter().map(|e| (e.name.clone(), e.tensor.detach().copy())).collect())
    }

    /// Copies tensors in by name. With `strict`, every key must match: missing, unexpected and
    /// mis-shaped keys are all named in the error. Returns (missing, unexpected) when not strict.
    pub fn load_state_dict(&mut self, sd: &[(String, Tensor)], strict: bool) -> Result<(Vec<String>, Vec<String>)> {
        let given: HashMap<&str, &Tensor> = sd.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let missing: Vec<String> = self.params.entries.iter().filter(|e| !given.contains_key(e.name.as_str())).map(|e| e.name.clone()).collect();
        let unexpected: Vec<String> = sd.iter().filter(|(k, _)| self.params.get(k).is_none()).map(|(k, _)| k.clone()).collect();
        let mut mis = Vec::new();
        for e in &self.params.entries {
            if let Some(t) = given.get(e.name.as_str()) {
                if t.size() != e.tensor.size() {
                    mis.push(format!("{}: checkpoint {:?}, model {:?}", e.name, t.size(), e.tensor.size()));
                }
            }
        }
        if !mis.is_empty() || (strict && (!missing.is_empty() || !unexpected.is_empty())) {
            let mut parts = Vec::new();
            if !missing.is_empty() {
                parts.push(format!("missing keys: {}", missing.join(", ")));
            }
            if !unexpected.is_empty() {
                parts.push(format!("unexpected keys: {}", unexpected.join(", ")));
            }
            if !mis.is_empty() {
                parts.push(format!("shape mismatch: {}", mis.join("; ")));
            }
            return Err(Error::invalid("state_dict", format!("does not fit {}: {}", self.arch.name(), parts.join(". "))));
        }
        tch::no_grad(|| -> Result<()> {
            for e in &mut self.params.entries {
                if let Some(t) = given.get(e.name.as_str()) {
                    let src = t.f_to_device(self.device)?.f_to_kind(e.tensor.kind())?;
                    e.tensor.f_copy_(&src)?;
                }
            }
            Ok(())
        })?;
        Ok((missing, unexpected))
    }

    /// Freezes (requires_grad = false) the parameters whose name starts with `prefix` ("" = all).
    /// Returns how many tensors changed.
    pub fn set_trainable(&mut self, prefix: &str, trainable: bool) -> Result<usize> {
        let mut n = 0;
        for e in self.params.entries.iter_mut().filter(|e| e.role == Role::Param) {
            if prefix_matches(&e.name, prefix) {
                e.tensor = e.tensor.set_requires_grad(trainable);
                n += 1;
            }
        }
        if n == 0 && !prefix.is_empty() {
            return Err(Error::invalid("prefix", format!("'{prefix}' names no parameter of {}", self.arch.name())));
        }
        Ok(n)
    }

    /// A fresh classifier head for `num_classes` classes (transfer learning), on the model's device.
    pub fn replace_head(&mut self, num_classes: i64) -> Result<()> {
        if num_classes < 1 {
            return Err(Error::invalid("num_classes", format!("{num_classes} must be at least 1")));
        }
        let name = self.net.head_name();
        let head = self.net.head_mut();
        let fin = head.w.size()[1];
        let bias = head.b.is_some();
        let mut fresh = Params::default();
        let lin = tch::no_grad(|| Linear::new(&mut fresh, name, fin, num_classes, bias));
        *head = lin;
        for f in fresh.entries {
            let slot = self.params.entries.iter_mut().find(|e| e.name == f.name).expect("head registered");
            *slot = f;
        }
        self.arch = self.arch.with_classes(num_classes);
        let device = std::mem::replace(&mut self.device, Device::Cpu);
        self.to_device(device)
    }
}

fn prefix_matches(name: &str, prefix: &str) -> bool {
    prefix.is_empty() || name == prefix || name.starts_with(&format!("{prefix}."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_model_has_the_seed_parameter_count_and_keys() {
        let m = Model::new(Arch::ImageClassifier { num_classes: 10 }).unwrap();
        assert_eq!(m.params.num_parameters(false), 3_249_994);
        let keys: Vec<&str> = m.params.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(&keys[..8], &["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked", "conv2.weight"]);
        assert_eq!(keys.last(), Some(&"fc2.bias"));
        let y = m.forward_t(&Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)), false).unwrap();
        assert_eq!(y.size(), vec![2, 10]);
    }

    #[test]
    fn resnet18_keys_and_head_replacement() {
        let mut m = Model::new(Arch::ResNet18 { num_classes: 1000, cifar_stem: false }).unwrap();
        assert_eq!(m.params.num_parameters(false), 11_689_512); // torchvision's resnet18
        assert!(m.params.get("layer2.0.downsample.1.running_var").is_some());
        m.set_trainable("", false).unwrap();
        m.replace_head(10).unwrap();
        assert_eq!(m.params.num_parameters(true), 512 * 10 + 10);
        assert!(m.set_trainable("nope", true).is_err());
        let y = m.forward_t(&Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu)), false).unwrap();
        assert_eq!(y.size(), vec![1, 10]);
    }

    #[test]
    fn bad_inputs_and_state_dicts_are_named() {
        let mut m = Model::new(Arch::SmallCnn { num_classes: 10, width: 8 }).unwrap();
        let e = m.forward_t(&Tensor::zeros([2, 1, 32, 32], (Kind::Float, Device::Cpu)), false).unwrap_err();
        assert!(e.to_string().contains("3 channels"), "{e}");
        let e = m.forward_t(&Tensor::zeros([2, 3, 32, 32], (Kind::Uint8, Device::Cpu)), false).unwrap_err();
        assert!(e.to_string().contains("float"), "{e}");
        let mut sd = m.state_dict();
        sd.pop();
        sd.push(("extra".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu))));
        sd[0].1 = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let e = m.load_state_dict(&sd, true).unwrap_err().to_string();
        assert!(e.contains("missing keys: fc.bias") && e.contains("unexpected keys: extra") && e.contains("conv1.weight: checkpoint [1]"), "{e}");
    }
}
