//! A network as a straight-line program of libtorch calls: what `torch.fx` captures from an
//! `nn.Module`, normalised in Python (`fastcifar/engine/capture.py`) to one canonical op per node with
//! positional arguments, laid out as `Op::layout` says. Running it here keeps the whole training step in Rust (no Python per op)
//! while calling the very ATen functions eager PyTorch calls, so the numbers are the same.
use tch::{Kind, Tensor};

use super::BnSync;
use crate::error::{Error, Result};

/// An argument of a node: the network's input, an earlier node's value, one of the module's own
/// parameters or buffers (by index), or a constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Input,
    Node(usize),
    Tensor(usize),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    None,
    List(Vec<Arg>),
}

/// The kind of value an op's argument takes: the program's layout, checked when a program is
/// built (`Graph::new`) for what is known then (constants, tensors), and when it runs for the
/// values of earlier nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Tensor,
    OptTensor,
    Int,
    OptInt,
    Ints,
    OptInts,
    /// Output sizes: ints, None keeping the input's (adaptive pooling).
    Sizes,
    /// Ints, or the string 'same' / 'valid' (a convolution's padding).
    Padding,
    Float,
    Bool,
    Str,
    Tensors,
    /// A tensor or a number (arithmetic).
    Number,
    List,
    Any,
}

impl Slot {
    pub fn describe(self) -> &'static str {
        match self {
            Slot::Tensor => "a tensor",
            Slot::OptTensor => "a tensor or None",
            Slot::Int => "an int",
            Slot::OptInt => "an int or None",
            Slot::Ints => "a list of ints",
            Slot::OptInts => "a list of ints or None",
            Slot::Sizes => "a list of sizes (ints or None)",
            Slot::Padding => "a list of ints, or 'same' / 'valid'",
            Slot::Float => "a number",
            Slot::Bool => "a bool",
            Slot::Str => "a string",
            Slot::Tensors => "a list of tensors",
            Slot::Number => "a tensor or a number",
            Slot::List => "a list",
            Slot::Any => "any value",
        }
    }

    /// Whether `a` can be this kind: an earlier node's value is known only when the program runs.
    fn admits(self, a: &Arg) -> bool {
        use Slot::*;
        let tensor = matches!(a, Arg::Input | Arg::Tensor(_) | Arg::Node(_));
        let int = matches!(a, Arg::Int(_) | Arg::Node(_));
        let all = |f: fn(&Arg) -> bool| matches!(a, Arg::List(v) if v.iter().all(f));
        match self {
            Any => true,
            _ if matches!(a, Arg::Node(_)) => true,
            Tensor => tensor,
            OptTensor => tensor || *a == Arg::None,
            Int => int || matches!(a, Arg::Bool(_)),
            OptInt => int || matches!(a, Arg::Bool(_) | Arg::None),
            Ints => int || all(|x| matches!(x, Arg::Int(_) | Arg::Node(_))),
            OptInts => *a == Arg::None || Ints.admits(a),
            Sizes => int || all(|x| matches!(x, Arg::Int(_) | Arg::None | Arg::Node(_))),
            Padding => matches!(a, Arg::Str(_)) || Ints.admits(a),
            Float => matches!(a, Arg::Float(_) | Arg::Int(_)),
            Bool => matches!(a, Arg::Bool(_)),
            Str => matches!(a, Arg::Str(_)),
            Tensors => all(|x| matches!(x, Arg::Input | Arg::Tensor(_) | Arg::Node(_))),
            Number => tensor || matches!(a, Arg::Int(_) | Arg::Float(_) | Arg::Bool(_)),
            List => matches!(a, Arg::List(_)),
        }
    }
}

macro_rules! ops {
    ($($v:ident = $s:literal ($($arg:ident: $slot:ident),*)),* $(,)?) => {
        /// The canonical ops, each with its arguments by name and kind: the one definition of the
        /// program's layout (`engine/capture.py` writes it; `_native.graph_ops()` shows it).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op { $($v),* }
        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$v),*];
            pub fn from_name(name: &str) -> Option<Op> {
                match name { $($s => Some(Op::$v),)* _ => None }
            }
            pub fn name(&self) -> &'static str {
                match self { $(Op::$v => $s),* }
            }
            /// The positional arguments, by name and kind.
            pub fn layout(&self) -> &'static [(&'static str, Slot)] {
                match self { $(Op::$v => &[$((stringify!($arg), Slot::$slot)),*]),* }
            }
        }
    };
}

ops! {
    Conv2d = "conv2d" (x: Tensor, weight: Tensor, bias: OptTensor, stride: Ints, padding: Padding, dilation: Ints, groups: Int),
    BatchNorm = "batch_norm" (
        x: Tensor, weight: OptTensor, bias: OptTensor, running_mean: OptTensor, running_var: OptTensor,
        num_batches_tracked: OptTensor, use_batch_stats: Bool, momentum: Float, eps: Float
    ),
    GroupNorm = "group_norm" (x: Tensor, groups: Int, weight: OptTensor, bias: OptTensor, eps: Float),
    LayerNorm = "layer_norm" (x: Tensor, shape: Ints, weight: OptTensor, bias: OptTensor, eps: Float),
    Linear = "linear" (x: Tensor, weight: Tensor, bias: OptTensor),
    Relu = "relu" (x: Tensor, inplace: Bool),
    Relu6 = "relu6" (x: Tensor, inplace: Bool),
    LeakyRelu = "leaky_relu" (x: Tensor, slope: Float, inplace: Bool),
    Gelu = "gelu" (x: Tensor, approximate: Str),
    Silu = "silu" (x: Tensor, inplace: Bool),
    Elu = "elu" (x: Tensor, inplace: Bool),
    Hardswish = "hardswish" (x: Tensor, inplace: Bool),
    Tanh = "tanh" (x: Tensor),
    Sigmoid = "sigmoid" (x: Tensor),
    Softmax = "softmax" (x: Tensor, dim: Int),
    LogSoftmax = "log_softmax" (x: Tensor, dim: Int),
    MaxPool2d = "max_pool2d" (x: Tensor, kernel: Ints, stride: Ints, padding: Ints, dilation: Ints, ceil_mode: Bool),
    AvgPool2d = "avg_pool2d" (
        x: Tensor, kernel: Ints, stride: Ints, padding: Ints, ceil_mode: Bool, count_include_pad: Bool,
        divisor_override: OptInt
    ),
    AdaptiveAvgPool2d = "adaptive_avg_pool2d" (x: Tensor, size: Sizes),
    AdaptiveMaxPool2d = "adaptive_max_pool2d" (x: Tensor, size: Sizes),
    Dropout = "dropout" (x: Tensor, p: Float, train: Bool, inplace: Bool),
    Dropout2d = "dropout2d" (x: Tensor, p: Float, train: Bool, inplace: Bool),
    Flatten = "flatten" (x: Tensor, start: Int, end: Int),
    View = "view" (x: Tensor, shape: Ints),
    Reshape = "reshape" (x: Tensor, shape: Ints),
    Permute = "permute" (x: Tensor, dims: Ints),
    Transpose = "transpose" (x: Tensor, dim0: Int, dim1: Int),
    Unsqueeze = "unsqueeze" (x: Tensor, dim: Int),
    Contiguous = "contiguous" (x: Tensor),
    Detach = "detach" (x: Tensor),
    Mean = "mean" (x: Tensor, dims: OptInts, keepdim: Bool),
    Sum = "sum" (x: Tensor, dims: OptInts, keepdim: Bool),
    Cat = "cat" (tensors: Tensors, dim: Int),
    Add = "add" (a: Number, b: Number),
    Sub = "sub" (a: Number, b: Number),
    Mul = "mul" (a: Number, b: Number),
    Div = "div" (a: Number, b: Number),
    FloorDiv = "floordiv" (a: Number, b: Number),
    Neg = "neg" (a: Number),
    Matmul = "matmul" (a: Tensor, b: Tensor),
    Size = "size" (x: Tensor, dim: OptInt),
    GetItem = "getitem" (list: List, index: Int),
    Identity = "identity" (x: Any),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    pub args: Vec<Arg>,
    /// Where the node comes from (module path or function), for error messages.
    pub name: String,
}

/// A value while the program runs.
#[derive(Debug)]
enum Value {
    T(Tensor),
    I(i64),
    F(f64),
    B(bool),
    S(String),
    None,
    L(Vec<Value>),
    /// Freed after its last use.
    Dead,
}

impl Value {
    fn shallow(&self) -> Value {
        match self {
            Value::T(t) => Value::T(t.shallow_clone()),
            Value::I(i) => Value::I(*i),
            Value::F(f) => Value::F(*f),
            Value::B(b) => Value::B(*b),
            Value::S(s) => Value::S(s.clone()),
            Value::None => Value::None,
            Value::L(v) => Value::L(v.iter().map(Value::shallow).collect()),
            Value::Dead => Value::Dead,
        }
    }
}

/// A straight-line program with its output, checked once when built.
#[derive(Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub output: Arg,
    /// For each node, the index of the last node that reads it (its value is dropped after that),
    /// so evaluation without autograd does not keep every activation alive.
    last_use: Vec<usize>,
}

/// Every argument, lists walked into.
fn walk(a: &Arg, f: &mut impl FnMut(&Arg)) {
    match a {
        Arg::List(v) => v.iter().for_each(|a| walk(a, f)),
        a => f(a),
    }
}

/// The nodes (`Arg::Node`) and the tensors (`Arg::Tensor`) that `args` read.
fn reads<'a>(args: impl IntoIterator<Item = &'a Arg>) -> (Vec<usize>, Vec<usize>) {
    let (mut nodes, mut tensors) = (Vec::new(), Vec::new());
    for a in args {
        walk(a, &mut |a| match a {
            Arg::Node(i) => nodes.push(*i),
            Arg::Tensor(i) => tensors.push(*i),
            _ => {}
        });
    }
    (nodes, tensors)
}

impl Graph {
    /// Checks that every node reads only earlier nodes and existing tensors.
    pub fn new(nodes: Vec<Node>, output: Arg, num_tensors: usize) -> Result<Graph> {
        let mut last_use: Vec<usize> = (0..nodes.len()).collect();
        for (i, n) in nodes.iter().enumerate() {
            check_layout(i, n)?;
            let (r, t) = reads(&n.args);
            if let Some(&bad) = r.iter().find(|&&j| j >= i) {
                return Err(Error::invalid(
                    "graph",
                    format!("node {i} ({}) reads node {bad}, which does not come before it", n.name),
                ));
            }
            if let Some(&bad) = t.iter().find(|&&j| j >= num_tensors) {
                return Err(Error::invalid(
                    "graph",
                    format!("node {i} ({}) reads tensor {bad}, but there are {num_tensors}", n.name),
                ));
            }
            for j in r {
                last_use[j] = i;
            }
        }
        let (r, _) = reads([&output]);
        if let Some(&bad) = r.iter().find(|&&j| j >= nodes.len()) {
            return Err(Error::invalid(
                "graph",
                format!("the output reads node {bad}, but there are {}", nodes.len()),
            ));
        }
        for j in r {
            last_use[j] = usize::MAX;
        }
        Ok(Graph {
            nodes,
            output,
            last_use,
        })
    }

    /// Runs the program on `x` with the module's `tensors`. `relaxed_views`: a `view` of memory
    /// that is not contiguous (channels_last activations) is taken as `reshape`, which gives the
    /// values the user's `view` gives on contiguous (N, C, H, W) memory.
    pub fn run(&self, x: &Tensor, tensors: &[Tensor], bn: &BnSync, relaxed_views: bool) -> Result<Tensor> {
        let mut vals: Vec<Value> = Vec::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.iter().enumerate() {
            let args = n
                .args
                .iter()
                .map(|a| resolve(a, x, tensors, &vals))
                .collect::<Result<Vec<_>>>()?;
            let v = eval(n, args, bn, relaxed_views).map_err(|e| at_node(n, e))?;
            vals.push(v);
            for (j, v) in vals.iter_mut().enumerate().take(i) {
                if self.last_use[j] == i {
                    *v = Value::Dead;
                }
            }
        }
        match resolve(&self.output, x, tensors, &vals)? {
            Value::T(t) => Ok(t),
            other => Err(Error::invalid(
                "model",
                format!("the network's output must be one tensor (the logits), got {other:?}"),
            )),
        }
    }
}

/// Node `i`'s arguments against its op's layout: their number, and the kind of each that is known
/// before the program runs.
fn check_layout(i: usize, n: &Node) -> Result<()> {
    let layout = n.op.layout();
    let at = || format!("node {i} ({}, {})", n.name, n.op.name());
    if n.args.len() != layout.len() {
        let names: Vec<&str> = layout.iter().map(|(name, _)| *name).collect();
        return Err(Error::invalid(
            "graph",
            format!(
                "{}: takes {} arguments ({}), got {}",
                at(),
                layout.len(),
                names.join(", "),
                n.args.len()
            ),
        ));
    }
    for (j, (a, (name, slot))) in n.args.iter().zip(layout).enumerate() {
        if !slot.admits(a) {
            return Err(Error::invalid(
                "graph",
                format!(
                    "{}: argument {j} ({name}) should be {}, got {a:?}",
                    at(),
                    slot.describe()
                ),
            ));
        }
    }
    Ok(())
}

/// libtorch's messages carry a C++ backtrace after the first line; the node's name says where.
fn at_node(n: &Node, e: Error) -> Error {
    match e {
        Error::Torch(t) => {
            let msg = t.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("Torch(\"")
                .to_string();
            Error::invalid("x", format!("{} ({}): {first}", n.name, n.op.name()))
        }
        other => other,
    }
}

fn resolve(a: &Arg, x: &Tensor, tensors: &[Tensor], vals: &[Value]) -> Result<Value> {
    Ok(match a {
        Arg::Input => Value::T(x.shallow_clone()),
        Arg::Node(i) => match &vals[*i] {
            Value::Dead => return Err(Error::invalid("graph", format!("node {i} was read after its last use"))),
            v => v.shallow(),
        },
        Arg::Tensor(i) => Value::T(tensors[*i].shallow_clone()),
        Arg::Int(v) => Value::I(*v),
        Arg::Float(v) => Value::F(*v),
        Arg::Bool(v) => Value::B(*v),
        Arg::Str(s) => Value::S(s.clone()),
        Arg::None => Value::None,
        Arg::List(v) => Value::L(v.iter().map(|a| resolve(a, x, tensors, vals)).collect::<Result<_>>()?),
    })
}

/// Typed access to a node's arguments, with messages that name the node.
struct Args<'a> {
    node: &'a Node,
    v: Vec<Value>,
}

impl Args<'_> {
    fn bad(&self, i: usize, want: &str) -> Error {
        let name = self.node.op.layout().get(i).map_or("?", |(n, _)| *n);
        Error::invalid(
            "graph",
            format!(
                "{} ({}): argument {i} ({name}) should be {want}, got {:?}",
                self.node.name,
                self.node.op.name(),
                self.v.get(i)
            ),
        )
    }
    fn t(&self, i: usize) -> Result<&Tensor> {
        match self.v.get(i) {
            Some(Value::T(t)) => Ok(t),
            _ => Err(self.bad(i, "a tensor")),
        }
    }
    fn opt_t(&self, i: usize) -> Result<Option<&Tensor>> {
        match self.v.get(i) {
            Some(Value::None) => Ok(None),
            _ => self.t(i).map(Some),
        }
    }
    fn i(&self, i: usize) -> Result<i64> {
        match self.v.get(i) {
            Some(Value::I(v)) => Ok(*v),
            Some(Value::B(b)) => Ok(*b as i64),
            _ => Err(self.bad(i, "an int")),
        }
    }
    fn f(&self, i: usize) -> Result<f64> {
        match self.v.get(i) {
            Some(Value::F(v)) => Ok(*v),
            Some(Value::I(v)) => Ok(*v as f64),
            _ => Err(self.bad(i, "a number")),
        }
    }
    fn b(&self, i: usize) -> Result<bool> {
        match self.v.get(i) {
            Some(Value::B(v)) => Ok(*v),
            _ => Err(self.bad(i, "a bool")),
        }
    }
    fn s(&self, i: usize) -> Result<&str> {
        match self.v.get(i) {
            Some(Value::S(s)) => Ok(s),
            _ => Err(self.bad(i, "a string")),
        }
    }
    fn ints(&self, i: usize) -> Result<Vec<i64>> {
        match self.v.get(i) {
            Some(Value::L(v)) => v
                .iter()
                .map(|x| match x {
                    Value::I(n) => Ok(*n),
                    _ => Err(self.bad(i, "a list of ints")),
                })
                .collect(),
            Some(Value::I(n)) => Ok(vec![*n]),
            _ => Err(self.bad(i, "a list of ints")),
        }
    }
    fn opt_ints(&self, i: usize) -> Result<Option<Vec<i64>>> {
        match self.v.get(i) {
            Some(Value::None) => Ok(None),
            _ => self.ints(i).map(Some),
        }
    }
}

/// A scalar or tensor operand of arithmetic.
enum Num<'a> {
    T(&'a Tensor),
    I(i64),
    F(f64),
}

fn num<'a>(a: &'a Args<'_>, i: usize) -> Result<Num<'a>> {
    match a.v.get(i) {
        Some(Value::T(t)) => Ok(Num::T(t)),
        Some(Value::I(v)) => Ok(Num::I(*v)),
        Some(Value::B(v)) => Ok(Num::I(*v as i64)),
        Some(Value::F(v)) => Ok(Num::F(*v)),
        _ => Err(a.bad(i, "a tensor or a number")),
    }
}

fn scalar(n: &Num<'_>) -> tch::Scalar {
    match n {
        Num::I(v) => tch::Scalar::int(*v),
        Num::F(v) => tch::Scalar::float(*v),
        Num::T(_) => unreachable!("scalar() is only called on numbers"),
    }
}

/// `a op b` with eager PyTorch's dispatch: tensor-tensor, tensor-scalar, scalar-tensor (the
/// reflected forms call the same ATen functions Python's `__radd__`, `__rsub__`, `__rtruediv__` do)
/// and plain integer or float arithmetic for sizes.
fn arith(op: Op, a: Num<'_>, b: Num<'_>) -> Result<Value> {
    use Num::*;
    let v = match (op, a, b) {
        (Op::Add, T(x), T(y)) => x.f_add(y)?,
        (Op::Sub, T(x), T(y)) => x.f_sub(y)?,
        (Op::Mul, T(x), T(y)) => x.f_mul(y)?,
        (Op::Div, T(x), T(y)) => x.f_div(y)?,
        (Op::FloorDiv, T(x), T(y)) => x.f_floor_divide(y)?,
        (Op::Add, T(x), s) | (Op::Add, s, T(x)) => x.f_add_scalar(scalar(&s))?,
        (Op::Mul, T(x), s) | (Op::Mul, s, T(x)) => x.f_mul_scalar(scalar(&s))?,
        (Op::Sub, T(x), s) => x.f_sub_scalar(scalar(&s))?,
        (Op::Sub, s, T(x)) => x.f_rsub_scalar(scalar(&s))?,
        (Op::Div, T(x), s) => x.f_div_scalar(scalar(&s))?,
        (Op::Div, s, T(x)) => x.f_reciprocal()?.f_mul_scalar(scalar(&s))?,
        (Op::FloorDiv, T(x), s) => x.f_floor_divide_scalar(scalar(&s))?,
        (Op::FloorDiv, s, T(x)) => Tensor::f_full_like(x, scalar(&s))?.f_floor_divide(x)?,
        (op, I(x), I(y)) => {
            return Ok(match op {
                Op::Add => Value::I(x.wrapping_add(y)),
                Op::Sub => Value::I(x.wrapping_sub(y)),
                Op::Mul => Value::I(x.wrapping_mul(y)),
                Op::Div => Value::F(x as f64 / y as f64),
                _ if y == 0 => return Err(Error::invalid("x", "integer division by zero")),
                _ => Value::I(x.div_euclid(y) - if (x.rem_euclid(y) != 0) && (y < 0) { 1 } else { 0 }),
            })
        }
        (op, x, y) => {
            let f = |n: Num<'_>| match n {
                I(v) => v as f64,
                F(v) => v,
                T(_) => 0.0,
            };
            let (x, y) = (f(x), f(y));
            return Ok(Value::F(match op {
                Op::Add => x + y,
                Op::Sub => x - y,
                Op::Mul => x * y,
                Op::Div => x / y,
                _ => (x / y).floor(),
            }));
        }
    };
    Ok(Value::T(v))
}

/// The fix for images with another channel count than the first convolution's: build the model for
/// them, or convert the images (grayscale <-> RGB are the cases that occur).
fn channel_fix(expected: i64, got: i64) -> String {
    let convert = match (expected, got) {
        (3, 1) => ", or convert the images to RGB: transforms.Grayscale(num_output_channels=3)",
        (1, 3) => ", or convert the images to grayscale: transforms.Grayscale()",
        _ => "",
    };
    format!("; build the model for them (e.g. in_channels={got}){convert}")
}

fn check_channels(a: &Args<'_>, x: &Tensor, expected: i64, what: &str) -> Result<()> {
    let s = x.size();
    if s.len() < 3 {
        return Err(Error::invalid(
            "x",
            format!("{} ({what}) expects a (N, C, H, W) batch, got shape {s:?}", a.node.name),
        ));
    }
    let got = s[s.len() - 3];
    if got != expected {
        return Err(Error::invalid(
            "x",
            format!(
                "{} ({what}) expects {expected} input channels, got {got} (input shape {s:?}){}",
                a.node.name,
                channel_fix(expected, got)
            ),
        ));
    }
    Ok(())
}

/// Eager PyTorch's in-place forms (`inplace=True`) are kept: they change what aliases see.
fn unary(
    x: &Tensor,
    inplace: bool,
    out: impl Fn(&Tensor) -> Result<Tensor, tch::TchError>,
    inp: impl Fn(&mut Tensor) -> Result<Tensor, tch::TchError>,
) -> Result<Tensor> {
    Ok(if inplace { inp(&mut x.shallow_clone())? } else { out(x)? })
}

fn eval(node: &Node, v: Vec<Value>, bn: &BnSync, relaxed_views: bool) -> Result<Value> {
    let a = Args { node, v };
    let t = |x: Tensor| Ok(Value::T(x));
    match node.op {
        Op::Conv2d => {
            // (x, weight, bias?, stride, padding (ints or 'same'/'valid'), dilation, groups)
            let (x, w, b) = (a.t(0)?, a.t(1)?, a.opt_t(2)?);
            let groups = a.i(6)?;
            check_channels(&a, x, w.size()[1] * groups, "Conv2d")?;
            match a.v.get(4) {
                Some(Value::S(p)) => t(x.f_conv2d_padding(w, b, a.ints(3)?, p, a.ints(5)?, groups)?),
                _ => t(x.f_conv2d(w, b, a.ints(3)?, a.ints(4)?, a.ints(5)?, groups)?),
            }
        }
        Op::BatchNorm => {
            // (x, weight?, bias?, running_mean?, running_var?, num_batches_tracked?, use_batch_stats, momentum, eps)
            let x = a.t(0)?;
            let (w, b, rm, rv, nbt) = (a.opt_t(1)?, a.opt_t(2)?, a.opt_t(3)?, a.opt_t(4)?, a.opt_t(5)?);
            let (training, momentum, eps) = (a.b(6)?, a.f(7)?, a.f(8)?);
            if let (Some(w), true) = (w, x.dim() >= 2) {
                check_channels_bn(&a, x, w.size()[0])?;
            }
            if training {
                if let Some(n) = nbt {
                    let _ = crate::torch_state::no_grad(|| n.shallow_clone().f_add_scalar_(1))?;
                }
                if let (Some(hook), Some(w), Some(b), Some(rm), Some(rv)) = (bn.hook(), w, b, rm, rv) {
                    let mut parked = bn.error_slot();
                    if parked.is_none() {
                        match hook.forward(x, w, b, rm, rv, momentum, eps) {
                            Ok(y) => return t(y),
                            Err(e) => *parked = Some(e),
                        }
                    }
                }
            }
            t(x.f_batch_norm(w, b, rm, rv, training, momentum, eps, true)?)
        }
        Op::GroupNorm => t(a.t(0)?.f_group_norm(a.i(1)?, a.opt_t(2)?, a.opt_t(3)?, a.f(4)?, true)?),
        Op::LayerNorm => t(a
            .t(0)?
            .f_layer_norm(a.ints(1)?, a.opt_t(2)?, a.opt_t(3)?, a.f(4)?, true)?),
        Op::Linear => {
            let (x, w) = (a.t(0)?, a.t(1)?);
            let (got, want) = (x.size().last().copied().unwrap_or(0), w.size()[1]);
            if got != want {
                return Err(Error::invalid(
                    "x",
                    format!(
                        "{} (Linear) expects {want} input features, got {got} (its input has shape {:?}): the network was built for another input size",
                        node.name,
                        x.size()
                    ),
                ));
            }
            t(x.f_linear(w, a.opt_t(2)?)?)
        }
        Op::Relu => t(unary(a.t(0)?, a.b(1)?, |x| x.f_relu(), |x| x.f_relu_())?),
        Op::Relu6 => t(unary(a.t(0)?, a.b(1)?, |x| x.f_relu6(), |x| x.f_relu6_())?),
        Op::LeakyRelu => {
            // (x, negative_slope, inplace). libtorch's C API here takes only the default slope;
            // another slope is x where x > 0, else x * slope: the same products, the same gradient.
            let (x, s, inplace) = (a.t(0)?, a.f(1)?, a.b(2)?);
            if s == 0.01 {
                t(unary(x, inplace, |x| x.f_leaky_relu(), |x| x.f_leaky_relu_())?)
            } else if inplace {
                Err(a.bad(2, "False for a slope other than 0.01"))
            } else {
                t(x.f_where_self(&x.f_gt(0)?, &x.f_mul_scalar(s)?)?)
            }
        }
        Op::Gelu => t(a.t(0)?.f_gelu(a.s(1)?)?),
        Op::Silu => t(unary(a.t(0)?, a.b(1)?, |x| x.f_silu(), |x| x.f_silu_())?),
        // (x, inplace): alpha 1 only; `engine/capture.py` sends other alphas to eager PyTorch.
        Op::Elu => t(unary(a.t(0)?, a.b(1)?, |x| x.f_elu(), |x| x.f_elu_())?),
        Op::Hardswish => t(unary(a.t(0)?, a.b(1)?, |x| x.f_hardswish(), |x| x.f_hardswish_())?),
        Op::Tanh => t(a.t(0)?.f_tanh()?),
        Op::Sigmoid => t(a.t(0)?.f_sigmoid()?),
        Op::Softmax => t(a.t(0)?.f_softmax(a.i(1)?, None::<Kind>)?),
        Op::LogSoftmax => t(a.t(0)?.f_log_softmax(a.i(1)?, None::<Kind>)?),
        Op::MaxPool2d => t(a
            .t(0)?
            .f_max_pool2d(a.ints(1)?, a.ints(2)?, a.ints(3)?, a.ints(4)?, a.b(5)?)?),
        Op::AvgPool2d => {
            let div = match a.v.get(6) {
                Some(Value::None) => None,
                _ => Some(a.i(6)?),
            };
            t(a.t(0)?
                .f_avg_pool2d(a.ints(1)?, a.ints(2)?, a.ints(3)?, a.b(4)?, a.b(5)?, div)?)
        }
        Op::AdaptiveAvgPool2d | Op::AdaptiveMaxPool2d => {
            let x = a.t(0)?;
            // None in output_size keeps that dimension of the input (as PyTorch's _list_with_default).
            let s = x.size();
            let out: Vec<i64> = match a.v.get(1) {
                Some(Value::L(l)) => l
                    .iter()
                    .enumerate()
                    .map(|(k, v)| match v {
                        Value::I(n) => Ok(*n),
                        Value::None => Ok(s[s.len() - 2 + k]),
                        _ => Err(a.bad(1, "output sizes")),
                    })
                    .collect::<Result<_>>()?,
                _ => a.ints(1)?,
            };
            if node.op == Op::AdaptiveAvgPool2d {
                t(x.f_adaptive_avg_pool2d(out)?)
            } else {
                t(x.f_adaptive_max_pool2d(out)?.0)
            }
        }
        Op::Dropout | Op::Dropout2d => {
            // (x, p, train, inplace)
            let (x, p, train, inplace) = (a.t(0)?, a.f(1)?, a.b(2)?, a.b(3)?);
            if node.op == Op::Dropout {
                t(unary(
                    x,
                    inplace,
                    |x| x.f_dropout(p, train),
                    |x| x.f_dropout_(p, train),
                )?)
            } else if x.dim() == 3 {
                // F.dropout2d treats a 3-D input as one unbatched image: channels are features.
                let y = unary(
                    &x.f_unsqueeze(0)?,
                    inplace,
                    |x| x.f_feature_dropout(p, train),
                    |x| x.f_feature_dropout_(p, train),
                )?;
                t(y.f_squeeze_dim(0)?)
            } else {
                t(unary(
                    x,
                    inplace,
                    |x| x.f_feature_dropout(p, train),
                    |x| x.f_feature_dropout_(p, train),
                )?)
            }
        }
        Op::Flatten => t(a.t(0)?.f_flatten(a.i(1)?, a.i(2)?)?),
        Op::View => {
            let x = a.t(0)?;
            if relaxed_views && !x.is_contiguous() {
                t(x.f_reshape(a.ints(1)?)?)
            } else {
                t(x.f_view_(a.ints(1)?)?)
            }
        }
        Op::Reshape => t(a.t(0)?.f_reshape(a.ints(1)?)?),
        Op::Permute => t(a.t(0)?.f_permute(a.ints(1)?)?),
        Op::Transpose => t(a.t(0)?.f_transpose(a.i(1)?, a.i(2)?)?),
        Op::Unsqueeze => t(a.t(0)?.f_unsqueeze(a.i(1)?)?),
        Op::Contiguous => t(a.t(0)?.f_contiguous()?),
        Op::Detach => t(a.t(0)?.f_detach()?),
        Op::Mean => t(a.t(0)?.f_mean_dim(a.opt_ints(1)?, a.b(2)?, None::<Kind>)?),
        Op::Sum => t(a.t(0)?.f_sum_dim_intlist(a.opt_ints(1)?, a.b(2)?, None::<Kind>)?),
        Op::Cat => {
            let Some(Value::L(items)) = a.v.first() else {
                return Err(a.bad(0, "a list of tensors"));
            };
            let ts = items
                .iter()
                .map(|v| match v {
                    Value::T(t) => Ok(t.shallow_clone()),
                    _ => Err(a.bad(0, "a list of tensors")),
                })
                .collect::<Result<Vec<_>>>()?;
            t(Tensor::f_cat(&ts, a.i(1)?)?)
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::FloorDiv => arith(node.op, num(&a, 0)?, num(&a, 1)?),
        Op::Neg => match num(&a, 0)? {
            Num::T(x) => t(x.f_neg()?),
            Num::I(v) => Ok(Value::I(-v)),
            Num::F(v) => Ok(Value::F(-v)),
        },
        Op::Matmul => t(a.t(0)?.f_matmul(a.t(1)?)?),
        Op::Size => {
            let s = a.t(0)?.size();
            match a.v.get(1) {
                Some(Value::I(d)) => {
                    let k = if *d < 0 { s.len() as i64 + d } else { *d };
                    s.get(k as usize)
                        .map(|&n| Value::I(n))
                        .ok_or_else(|| a.bad(1, "a dimension of the tensor"))
                }
                _ => Ok(Value::L(s.into_iter().map(Value::I).collect())),
            }
        }
        Op::GetItem => {
            let k = a.i(1)?;
            match a.v.first() {
                Some(Value::L(items)) => {
                    let idx = if k < 0 { items.len() as i64 + k } else { k };
                    items
                        .get(idx as usize)
                        .map(Value::shallow)
                        .ok_or_else(|| a.bad(1, "an index in range"))
                }
                _ => Err(a.bad(0, "a list")),
            }
        }
        Op::Identity => Ok(a.v.into_iter().next().unwrap_or(Value::None)),
    }
}

fn check_channels_bn(a: &Args<'_>, x: &Tensor, expected: i64) -> Result<()> {
    let got = x.size()[1];
    if got != expected {
        return Err(Error::invalid(
            "x",
            format!(
                "{} (BatchNorm) expects {expected} channels, got {got} (input shape {:?})",
                a.node.name,
                x.size()
            ),
        ));
    }
    Ok(())
}
