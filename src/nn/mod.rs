//! Models through libtorch: a network is the user's `nn.Module` (or a built-in, which is one too),
//! captured by `torch.fx` and run here as a `Graph` over the module's own parameter and buffer
//! tensors (the same TensorImpls, not copies), so training in Rust updates the Python module in
//! place and its `state_dict()` is its own. What the graph cannot express runs the module's own
//! forward in eager PyTorch through `Forward`, behind the same engine.
mod graph;

use std::sync::{Arc, Mutex, RwLock};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::torch_state::{self, Autocast, Precision, Scope};
pub use graph::{Arg, Graph, Node, Op, Slot};

/// Batch statistics shared across data-parallel processes (SyncBatchNorm). The core cannot talk to
/// other processes itself: the Python bindings implement this on torch.distributed. `forward` must
/// return the normalised batch with its autograd history (its backward reduces across ranks too)
/// and update the running statistics in place.
pub trait BatchNormSync: Send + Sync {
    #[allow(
        clippy::too_many_arguments,
        reason = "the arguments of torch's batch_norm, in its order"
    )]
    fn forward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor>;
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

/// A network's forward pass that runs outside the graph (eager PyTorch, through the bindings).
pub trait Forward: Send + Sync {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor>;
}

/// How the model computes its logits.
enum Exec {
    /// Programs captured in train and in eval mode: `torch.fx` records `self.training` and every
    /// module's mode as constants, so each mode has its own.
    Graph { train: Graph, eval: Graph },
    /// The module's own forward (ops the graph cannot express, or code fx cannot trace).
    Eager(Box<dyn Forward>),
}

pub struct Model {
    /// The module's class name, for messages.
    pub name: String,
    /// Parameters and buffers, in the order the graphs index them, with their names.
    pub names: Vec<String>,
    tensors: Vec<Tensor>,
    exec: Exec,
    bn_sync: BnSync,
    device: Device,
    pub training: bool,
    /// Mixed precision for every forward (training, evaluation, prediction, TTA, the eager
    /// fallback alike): autocast on the model's device in this dtype. Float32 leaves the caller's
    /// own autocast state as it is.
    pub precision: Precision,
    /// Run the graph on channels_last activations (its input converted if not already so, its
    /// `view`s taken as `reshape` where the memory is not contiguous, as for the user's
    /// `x.view(x.size(0), -1)` after a convolution). The eager fallback keeps the module's own
    /// layout: its `view`s are the user's code.
    pub channels_last: bool,
}

/// A device as PyTorch writes it ("cpu", "cuda:0").
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The one device all of a model's tensors are on, or an error naming the first that is not.
fn common_device(names: &[String], tensors: &[Tensor]) -> Result<Device> {
    let Some(first) = tensors.first() else {
        return Ok(Device::Cpu);
    };
    let d = first.device();
    if let Some((n, t)) = names.iter().zip(tensors).find(|(_, t)| t.device() != d) {
        return Err(Error::invalid(
            "model",
            format!(
                "its tensors are on more than one device: {} is on {}, {n} on {}; move the module with .to(device)",
                names[0],
                device_name(d),
                device_name(t.device())
            ),
        ));
    }
    Ok(d)
}

impl Model {
    /// A model that runs `train` / `eval` programs (nodes and output) over `tensors`, which are
    /// shared with the caller (shallow handles to the same tensors).
    pub fn graph(
        name: impl Into<String>,
        names: Vec<String>,
        tensors: Vec<Tensor>,
        train: (Vec<Node>, Arg),
        eval: (Vec<Node>, Arg),
    ) -> Result<Model> {
        let n = tensors.len();
        let exec = Exec::Graph {
            train: Graph::new(train.0, train.1, n)?,
            eval: Graph::new(eval.0, eval.1, n)?,
        };
        Model::new(name.into(), names, tensors, exec)
    }

    /// A model whose forward runs elsewhere (`f`); `tensors` are still what the optimizer trains.
    pub fn eager(
        name: impl Into<String>,
        names: Vec<String>,
        tensors: Vec<Tensor>,
        f: Box<dyn Forward>,
    ) -> Result<Model> {
        Model::new(name.into(), names, tensors, Exec::Eager(f))
    }

    fn new(name: String, names: Vec<String>, tensors: Vec<Tensor>, exec: Exec) -> Result<Model> {
        if names.len() != tensors.len() {
            return Err(Error::invalid(
                "model",
                format!("{} names for {} tensors", names.len(), tensors.len()),
            ));
        }
        let device = common_device(&names, &tensors)?;
        Ok(Model {
            name,
            names,
            tensors,
            exec,
            bn_sync: BnSync::default(),
            device,
            training: true,
            precision: Precision::Float32,
            channels_last: false,
        })
    }

    /// Takes the module's current tensors again (after it moved device or swapped a buffer, as
    /// `nn.Module.to` does). The names must be the same, in the same order.
    pub fn rebind(&mut self, names: &[String], tensors: Vec<Tensor>) -> Result<()> {
        if names != self.names.as_slice() {
            let gone: Vec<&String> = self.names.iter().filter(|n| !names.contains(n)).collect();
            let new: Vec<&String> = names.iter().filter(|n| !self.names.contains(n)).collect();
            return Err(Error::invalid(
                "model",
                format!("its parameters and buffers changed since the trainer compiled it (gone: {gone:?}, new: {new:?}); build a new Trainer"),
            ));
        }
        self.device = common_device(names, &tensors)?;
        self.tensors = tensors;
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn is_graph(&self) -> bool {
        matches!(self.exec, Exec::Graph { .. })
    }

    /// Whether batches should come in channels_last memory (the graph runs so; see `channels_last`).
    pub fn wants_channels_last(&self) -> bool {
        self.channels_last && self.is_graph()
    }

    /// Checks a batch before it reaches libtorch, so mistakes get a message, not a C++ trace.
    /// Channel and size mismatches are named by the layer that meets them (see `graph.rs`).
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        if s.is_empty() {
            return Err(Error::invalid("x", "expected a batch, got a 0-dimensional tensor"));
        }
        if !matches!(x.kind(), Kind::Float | Kind::Half | Kind::BFloat16) {
            let hint = if x.kind() == Kind::Uint8 {
                "; convert uint8 images with ToTensor / Normalize first"
            } else {
                ""
            };
            return Err(Error::invalid(
                "x",
                format!("expected float32 (or float16 / bfloat16), got {:?}{hint}", x.kind()),
            ));
        }
        if x.device() != self.device {
            return Err(Error::invalid(
                "x",
                format!(
                    "is on {} but the model is on {}",
                    device_name(x.device()),
                    device_name(self.device)
                ),
            ));
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

    /// Logits. `train` selects batch statistics, active dropout and the train-mode graph.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_in(x, train, self.precision)
    }

    /// Logits in `precision` (the training loop's, which may differ from the model's own).
    pub fn forward_in(&self, x: &Tensor, train: bool, precision: Precision) -> Result<Tensor> {
        match precision.autocast_kind() {
            None => self.forward_exact(x, train),
            Some(kind) => {
                let cast = Autocast {
                    device: self.device,
                    dtype: Some(kind),
                };
                torch_state::scoped(Scope::cast(cast), || self.forward_exact(x, train))
            }
        }
    }

    fn forward_exact(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let y = match &self.exec {
            Exec::Graph { train: g, eval } => {
                let x = if x.kind() == Kind::Float {
                    x.shallow_clone()
                } else {
                    x.to_kind(Kind::Float)
                };
                let x = if self.channels_last {
                    crate::loader::to_channels_last(&x)?
                } else {
                    x
                };
                (if train { g } else { eval }).run(&x, &self.tensors, &self.bn_sync, self.channels_last)
            }
            Exec::Eager(f) => f.forward(x, train),
        };
        if let Some(e) = self.bn_sync.error_slot().take() {
            return Err(e);
        }
        let y = y?;
        if y.dim() != 2 {
            return Err(Error::invalid(
                "model",
                format!(
                    "{} returned shape {:?}; a classifier returns logits (N, num_classes)",
                    self.name,
                    y.size()
                ),
            ));
        }
        Ok(y)
    }

    /// Sets (or clears) the SyncBatchNorm hook that every BatchNorm layer uses in training mode.
    pub fn set_batch_norm_sync(&self, hook: Option<Arc<dyn BatchNormSync>>) {
        self.bn_sync.set(hook);
        self.bn_sync.error_slot().take();
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, self.training)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(dims: &[i64]) -> Tensor {
        Tensor::randn(dims, (Kind::Float, Device::Cpu))
    }

    fn node(op: &str, args: Vec<Arg>, name: &str) -> Node {
        Node {
            op: Op::from_name(op).unwrap(),
            args,
            name: name.into(),
        }
    }

    /// conv -> batch_norm -> relu -> max_pool -> flatten (size-based view) -> linear
    fn small(train: bool) -> (Vec<Node>, Arg) {
        use Arg::*;
        let ints = |v: &[i64]| List(v.iter().map(|&i| Int(i)).collect());
        let nodes = vec![
            node(
                "conv2d",
                vec![
                    Input,
                    Tensor(0),
                    Tensor(1),
                    ints(&[1, 1]),
                    ints(&[1, 1]),
                    ints(&[1, 1]),
                    Int(1),
                ],
                "conv",
            ),
            node(
                "batch_norm",
                vec![
                    Node(0),
                    Tensor(2),
                    Tensor(3),
                    Tensor(4),
                    Tensor(5),
                    Tensor(6),
                    Bool(train),
                    Float(0.1),
                    Float(1e-5),
                ],
                "bn",
            ),
            node("relu", vec![Node(1), Bool(false)], "relu"),
            node(
                "max_pool2d",
                vec![
                    Node(2),
                    ints(&[2, 2]),
                    ints(&[2, 2]),
                    ints(&[0, 0]),
                    ints(&[1, 1]),
                    Bool(false),
                ],
                "pool",
            ),
            node("size", vec![Node(3), Int(0)], "size"),
            node("view", vec![Node(3), List(vec![Node(4), Int(-1)])], "view"),
            node("linear", vec![Node(5), Tensor(7), Tensor(8)], "fc"),
        ];
        (nodes, Node(6))
    }

    fn small_tensors() -> (Vec<String>, Vec<Tensor>) {
        let names = [
            "conv.weight",
            "conv.bias",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked",
            "fc.weight",
            "fc.bias",
        ];
        let ts = vec![
            cpu(&[4, 3, 3, 3]),
            cpu(&[4]),
            Tensor::ones([4], (Kind::Float, Device::Cpu)),
            Tensor::zeros([4], (Kind::Float, Device::Cpu)),
            Tensor::zeros([4], (Kind::Float, Device::Cpu)),
            Tensor::ones([4], (Kind::Float, Device::Cpu)),
            Tensor::zeros([], (Kind::Int64, Device::Cpu)),
            cpu(&[5, 4 * 4 * 4]),
            cpu(&[5]),
        ];
        (names.iter().map(|s| s.to_string()).collect(), ts)
    }

    #[test]
    fn graph_matches_direct_calls_and_updates_buffers_in_place() {
        let (names, ts) = small_tensors();
        let handles: Vec<Tensor> = ts.iter().map(|t| t.shallow_clone()).collect();
        let m = Model::graph("Small", names, ts, small(true), small(false)).unwrap();
        let x = cpu(&[2, 3, 8, 8]);
        let y = m.forward_t(&x, true).unwrap();
        let h = &handles;
        let want = x
            .conv2d(&h[0], Some(&h[1]), [1, 1], [1, 1], [1, 1], 1)
            .batch_norm(
                Some(&h[2]),
                Some(&h[3]),
                None::<&Tensor>,
                None::<&Tensor>,
                true,
                0.1,
                1e-5,
                true,
            )
            .relu()
            .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
            .view([2, -1])
            .linear(&h[7], Some(&h[8]));
        assert!(y.equal(&want));
        // The running statistics and the batch counter are the caller's own tensors.
        assert_eq!(i64::try_from(&h[6]).unwrap(), 1);
        assert!(h[4].abs().sum(Kind::Float).double_value(&[]) > 0.0);
        let _ = m.forward_t(&x, false).unwrap();
        assert_eq!(i64::try_from(&h[6]).unwrap(), 1, "eval mode does not count batches");
    }

    #[test]
    fn mismatched_inputs_are_named_by_the_layer() {
        let (names, ts) = small_tensors();
        let m = Model::graph("Small", names, ts, small(true), small(false)).unwrap();
        let e = m.forward_t(&cpu(&[2, 1, 8, 8]), false).unwrap_err().to_string();
        assert!(e.contains("conv (Conv2d) expects 3 input channels, got 1"), "{e}");
        let e = m.forward_t(&cpu(&[2, 3, 6, 6]), false).unwrap_err().to_string();
        assert!(e.contains("fc (Linear) expects 64 input features, got 36"), "{e}");
        let e = m
            .forward_t(&Tensor::zeros([2, 3, 8, 8], (Kind::Uint8, Device::Cpu)), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("uint8") || e.contains("Uint8"), "{e}");
    }

    #[test]
    fn graphs_that_read_forward_or_out_of_range_are_refused() {
        let (names, ts) = small_tensors();
        let (mut nodes, out) = small(true);
        nodes[0].args[0] = Arg::Node(3);
        let e = Model::graph("Bad", names.clone(), ts, (nodes, out.clone()), small(false))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not come before it"), "{e}");
        let (_, ts) = small_tensors();
        let (mut nodes, _) = small(true);
        nodes[6].args[1] = Arg::Tensor(42);
        let e = Model::graph("Bad", names, ts, (nodes, out), small(false))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("reads tensor 42"), "{e}");
    }

    #[test]
    fn scalar_arithmetic_follows_eager_pytorch() {
        use Arg::*;
        let nodes = vec![
            node("sub", vec![Int(1), Input], "rsub"),
            node("div", vec![Float(2.0), Node(0)], "rdiv"),
            node("mul", vec![Node(1), Int(3)], "mul"),
            node("size", vec![Input, Int(1)], "size"),
            node("floordiv", vec![Node(3), Int(2)], "half"),
            node("view", vec![Node(2), List(vec![Int(-1), Node(4)])], "view"),
        ];
        let m = Model::graph("Arith", vec![], vec![], (nodes.clone(), Node(5)), (nodes, Node(5))).unwrap();
        let x = tch::Tensor::from_slice(&[0.25f32, 0.5, 2.0, 4.0]).view([1, 4]);
        let y = m.forward_t(&x, false).unwrap();
        let want = ((x.rsub_scalar(1).reciprocal() * 2.0) * 3).view([-1, 2]);
        assert!(y.equal(&want), "{y:?}");
    }
}
