"""Any ``torch.nn.Module`` on the Rust engine: capture with ``torch.fx``, run in Rust.

``compile_module(module)`` traces the module twice, in train and in eval mode (fx records
``self.training`` and each layer's mode as constants), and writes each graph as a straight-line
program of canonical ops: one node per libtorch call, with positional arguments. The Rust engine
(``src/nn/graph.rs``) runs those programs over the module's own parameter and buffer tensors,
shared, not copied, calling the same ATen functions eager PyTorch calls.

A module that fx cannot trace, or that uses an op outside the core's list, still trains on the
same engine: its own ``forward`` runs in eager PyTorch (the loop, loss, backward, optimizer and
data stay in Rust). A one-time warning names the cause.

Each node is ``(op, args, name)``; an argument is ``("x", 0)`` the input, ``("v", i)`` node i,
``("p", i)`` tensor i, a list or a constant. The argument layout of every canonical op (names,
order and kinds) is the core's, defined once in ``src/nn/graph.rs`` (``Op::layout``) and shown by
``fastcifar._native.graph_ops()``; the core checks every node against it when a program is built.
"""

from __future__ import annotations

import contextlib
import operator
import threading
import types
from typing import Any, Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from .. import _native as _rs
from .._args import BindError, bind, signature
from .._warn import warn_once

__all__ = ["compile_module", "Unsupported"]


class Unsupported(Exception):
    """What sends a module to the eager fallback (the message names the op or the trace error)."""


def module_tensors(module: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """The module's parameters, then its buffers (each shared tensor once), with their names."""
    names, tensors, seen = [], [], set()
    for n, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            names.append(n)
            tensors.append(t)
    return names, tensors


def compile_module(module: nn.Module, eager_because: str | None = None) -> _rs.NativeModel:
    """The native model for ``module``: its graphs, or its own forward when they cannot be had
    (or when ``eager_because`` says why not to use them)."""
    names, tensors = module_tensors(module)
    name = type(module).__name__
    try:
        if eager_because is not None:
            raise Unsupported(eager_because)
        _no_hooks(module)
        programs = {mode: _Capture(module, mode, tensors).program() for mode in (True, False)}
        return _rs.NativeModel.graph(name, names, tensors, train=programs[True], eval=programs[False])
    except Unsupported as e:
        warn_once(
            ("capture", name, str(e)),
            f"fastcifar: {name} runs its forward in eager PyTorch because {e}; the data, loss, backward "
            f"and optimizer still run in Rust (see the README, 'Your own network')",
            stacklevel=3,
        )
        return _rs.NativeModel.eager(name, names, tensors, forward=_eager_forward(module))


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooks(m: nn.Module) -> int:
    return sum(len(getattr(m, h, None) or ()) for h in _HOOKS)


def _no_hooks(module: nn.Module) -> None:
    """Module hooks run in ``nn.Module.__call__``, which the graph never calls: a module with any
    runs eagerly, so that its hooks see every call (tensor hooks work on the graph too)."""
    from torch.nn.modules import module as _m

    for h in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    ):
        if getattr(_m, h, None):
            raise Unsupported("a global module hook is registered (torch.nn.modules.module.register_module_*_hook)")
    for n, m in module.named_modules():
        if _hooks(m):
            raise Unsupported(f"{n or 'the module'} has forward or backward hooks")


def _eager_forward(module: nn.Module) -> Callable:
    def forward(x: torch.Tensor, train: bool) -> torch.Tensor:
        if module.training != train:
            module.train(train)
        y = module(x)
        if not isinstance(y, torch.Tensor):
            raise TypeError(
                f"{type(module).__name__}.forward returned {type(y).__name__}; "
                "the trainer needs one logits tensor (N, num_classes)"
            )
        return y

    return forward


def _is_ref(v) -> bool:
    """Node references are tuples; literal sequences were made lists by ``_Capture.arg``."""
    return isinstance(v, tuple)


def _pair(v) -> list:
    _need(not _is_ref(v), "a window or stride computed at run time")
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def _ints(v):
    """A dims or shape argument: None, an int, a list, or a reference (resolved in Rust)."""
    return [v] if isinstance(v, int) and not isinstance(v, bool) else v


class _Capture:
    """One fx trace of ``module`` in one mode, written as a program (its nodes and its output)."""

    def __init__(self, module: nn.Module, training: bool, tensors: list[torch.Tensor]):
        self.root = module
        self.training = training
        self.index = {id(t): i for i, t in enumerate(tensors)}
        self.nodes: list[tuple] = []
        self.env: dict[torch.fx.Node, Any] = {}

    def program(self) -> tuple:
        # Every layer reads its mode while its node is written, so the mode holds until the end.
        modes = {m: m.training for m in self.root.modules()}
        self.root.train(self.training)
        try:
            return self._program()
        finally:
            for m, mode in modes.items():
                m.training = mode

    def _program(self) -> tuple:
        try:
            with _regions_refused():
                graph = torch.fx.Tracer().trace(self.root)
        except _Region as r:
            raise Unsupported(
                f"its forward enters {r.args[0]}, a region torch.fx does not record (the graph would run it "
                "in the surrounding mode)"
            ) from None
        except Exception as e:
            raise Unsupported(f"torch.fx cannot trace its forward ({type(e).__name__}: {e})") from None
        output = None
        placeholders = 0
        for n in graph.nodes:
            if n.op == "placeholder":
                placeholders += 1
                if placeholders == 1:
                    self.env[n] = ("x", 0)
                elif n.args:  # an extra argument with a default: a constant
                    self.env[n] = self.arg(n.args[0])
                else:
                    raise Unsupported(f"its forward takes more than one input ({n.target})")
            elif n.op == "get_attr":
                self.env[n] = self.tensor(_attr(self.root, n.target), n.target)
            elif n.op == "call_module":
                self.call_module(n)
            elif n.op == "call_function":
                self.call(n, _FUNCTIONS.get(n.target), _fname(n.target))
            elif n.op == "call_method":
                self.call(n, _METHODS.get(n.target), f"Tensor.{n.target}")
            elif n.op == "output":
                out = n.args[0]
                if not isinstance(out, torch.fx.Node):
                    raise Unsupported(f"its forward returns {type(out).__name__}, not one tensor")
                output = self.env[out]
        return self.nodes, output

    # --- arguments ---------------------------------------------------------------------------
    def tensor(self, t, where: str):
        if t is None:
            return None
        i = self.index.get(id(t))
        if i is None:
            raise Unsupported(f"{where} is a tensor that is neither a parameter nor a buffer")
        return ("p", i)

    def arg(self, a):
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if a is None or isinstance(a, (bool, int, float, str)):
            return a
        if isinstance(a, (list, tuple, torch.Size)):
            return [self.arg(v) for v in a]
        raise Unsupported(f"an argument of type {type(a).__name__} ({a!r})")

    def emit(self, op: str, args: list, name: str, n: torch.fx.Node):
        self.nodes.append((op, args, name))
        self.env[n] = ("v", len(self.nodes) - 1)

    # --- modules -----------------------------------------------------------------------------
    def call_module(self, n: torch.fx.Node):
        target = str(n.target)  # a call_module node's target is the module's qualified name
        m = self.root.get_submodule(target)
        rule = _MODULES.get(type(m))
        if rule is None or n.kwargs or len(n.args) != 1:
            raise Unsupported(f"of {type(m).__name__} ({target})")
        x = self.arg(n.args[0])
        op, args = rule(m, x, lambda t, attr: self.tensor(t, f"{target}.{attr}"))
        self.emit(op, args, target, n)

    # --- functions and methods -----------------------------------------------------------------
    def call(self, n: torch.fx.Node, rule, fname: str):
        if rule is None:
            raise Unsupported(f"of {fname} ({n.name})")
        sig, build = rule
        a = _bind(sig, n.args, n.kwargs, fname, n.name)
        op, args = build({k: self.arg(v) for k, v in a.items()})
        self.emit(op, args, n.name, n)


class _Region(Exception):
    """A forward entered a context manager that fx would drop (its name in ``args[0]``)."""


# Context managers whose regions torch.fx does not record: tracing runs their __enter__ and __exit__
# and keeps only the ops inside, so the graph would run a `with torch.autocast(...)` or
# `with torch.no_grad():` region in the surrounding mode, a silent difference. A forward that enters
# one runs eagerly instead, where the region is honoured.
_REGIONS = {
    "torch.autocast": torch.amp.autocast_mode.autocast,
    "torch.no_grad": torch.no_grad,
    "torch.enable_grad": torch.enable_grad,
    "torch.set_grad_enabled": torch.set_grad_enabled,
    "torch.inference_mode": torch.inference_mode,
}


@contextlib.contextmanager
def _regions_refused():
    """While the trace runs on this thread, entering one of ``_REGIONS`` raises ``_Region``; other
    threads (a loader's Python steps) enter them as usual. Grad mode and autocast are the caller's
    again afterwards: ``set_grad_enabled`` sets the mode when it is built, before ``__enter__``."""
    me = threading.get_ident()
    originals = {cls: cls.__dict__["__enter__"] for cls in _REGIONS.values()}

    def refusing(name: str, original: Callable) -> Callable:
        def __enter__(self):
            if threading.get_ident() == me:
                raise _Region(name)
            return original(self)

        return __enter__

    grad = torch.is_grad_enabled()
    cast = {d: torch.is_autocast_enabled(d) for d in ("cpu", "cuda")}
    for name, cls in _REGIONS.items():
        cls.__enter__ = refusing(name, originals[cls])
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.__enter__ = original
        torch.set_grad_enabled(grad)
        for d, on in cast.items():
            torch.set_autocast_enabled(d, on)


def _attr(root: nn.Module, target: str):
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, torch.Tensor):
        raise Unsupported(f"{target} is a {type(obj).__name__} attribute")
    return obj


def _fname(f) -> str:
    mod = getattr(f, "__module__", None) or ""
    return f"{mod}.{getattr(f, '__name__', repr(f))}".lstrip(".")


def _bind(sig, args: tuple, kwargs: dict, fname: str, where: str) -> dict:
    """An fx node's positional and keyword arguments bound to its rule's signature (``_args.bind``);
    what does not bind is Unsupported, naming the function and the node."""
    try:
        return bind(sig, args, kwargs)
    except BindError as e:
        why = {
            "positional": f"with {e.given - e.limit} more positional arguments than fastcifar knows",
            "unexpected": f"with argument {e.name}=",
            "twice": f"with {e.name} given both by position and by keyword",
            "missing": f"without {e.name}",
        }[e.kind]
        raise Unsupported(f"{fname} {why} ({where})") from None


def _need(cond: bool, what: str):
    if not cond:
        raise Unsupported(what)


# --- module rules: (module, x, tensor) -> (op, args) ----------------------------------------------
def _conv(m: nn.Conv2d, x, t):
    _need(m.padding_mode == "zeros", f"Conv2d with padding_mode='{m.padding_mode}'")
    pad = m.padding if isinstance(m.padding, str) else list(m.padding)
    return "conv2d", [x, t(m.weight, "weight"), t(m.bias, "bias"), list(m.stride), pad, list(m.dilation), m.groups]


def _batch_norm(m: nn.modules.batchnorm._BatchNorm, x, t):
    # nn.BatchNorm's forward, with its decisions taken here (its mode is fixed per graph).
    _need(m.momentum is not None, "BatchNorm with momentum=None (a cumulative average)")
    track = m.training and m.track_running_stats
    use_batch = m.training or (m.running_mean is None and m.running_var is None)
    keep = not m.training or m.track_running_stats
    return "batch_norm", [
        x,
        t(m.weight, "weight"),
        t(m.bias, "bias"),
        t(m.running_mean, "running_mean") if keep else None,
        t(m.running_var, "running_var") if keep else None,
        t(m.num_batches_tracked, "num_batches_tracked") if track else None,
        use_batch,
        float(m.momentum or 0.0),  # not None: refused above
        float(m.eps),
    ]


def _softmax(op):
    def rule(m, x, t):
        _need(m.dim is not None, f"{type(m).__name__} without dim")
        return op, [x, m.dim]

    return rule


def _max_pool(m: nn.MaxPool2d, x, t):
    _need(not m.return_indices, "MaxPool2d with return_indices=True")
    return "max_pool2d", [
        x,
        _pair(m.kernel_size),
        _pair(m.stride if m.stride is not None else m.kernel_size),
        _pair(m.padding),
        _pair(m.dilation),
        bool(m.ceil_mode),
    ]


def _avg_pool(m: nn.AvgPool2d, x, t):
    return "avg_pool2d", [
        x,
        _pair(m.kernel_size),
        _pair(m.stride if m.stride is not None else m.kernel_size),
        _pair(m.padding),
        bool(m.ceil_mode),
        bool(m.count_include_pad),
        m.divisor_override,
    ]


def _size2(v) -> list:
    return [v, v] if v is None or isinstance(v, int) else list(v)


def _adaptive_max(m, x, t):
    _need(not m.return_indices, "AdaptiveMaxPool2d with return_indices=True")
    return "adaptive_max_pool2d", [x, _size2(m.output_size)]


def _leaky(m, x, t):
    _need(not (m.inplace and m.negative_slope != 0.01), "LeakyReLU(inplace=True) with a slope other than 0.01")
    return "leaky_relu", [x, float(m.negative_slope), bool(m.inplace)]


def _elu(m, x, t):
    _need(m.alpha == 1.0, f"ELU with alpha={m.alpha}")
    return "elu", [x, bool(m.inplace)]


def _inplace(op):
    return lambda m, x, t: (op, [x, bool(m.inplace)])


def _plain(op):
    return lambda m, x, t: (op, [x])


_MODULES: dict[type, Callable] = {
    nn.Conv2d: _conv,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.GroupNorm: lambda m, x, t: (
        "group_norm",
        [x, m.num_groups, t(m.weight, "weight"), t(m.bias, "bias"), float(m.eps)],
    ),
    nn.LayerNorm: lambda m, x, t: (
        "layer_norm",
        [x, list(m.normalized_shape), t(m.weight, "weight"), t(m.bias, "bias"), float(m.eps)],
    ),
    nn.Linear: lambda m, x, t: ("linear", [x, t(m.weight, "weight"), t(m.bias, "bias")]),
    nn.ReLU: _inplace("relu"),
    nn.ReLU6: _inplace("relu6"),
    nn.SiLU: _inplace("silu"),
    nn.Hardswish: _inplace("hardswish"),
    nn.LeakyReLU: _leaky,
    nn.ELU: _elu,
    nn.GELU: lambda m, x, t: ("gelu", [x, m.approximate]),
    nn.Tanh: _plain("tanh"),
    nn.Sigmoid: _plain("sigmoid"),
    nn.Softmax: _softmax("softmax"),
    nn.LogSoftmax: _softmax("log_softmax"),
    nn.MaxPool2d: _max_pool,
    nn.AvgPool2d: _avg_pool,
    nn.AdaptiveAvgPool2d: lambda m, x, t: ("adaptive_avg_pool2d", [x, _size2(m.output_size)]),
    nn.AdaptiveMaxPool2d: _adaptive_max,
    nn.Dropout: lambda m, x, t: ("dropout", [x, float(m.p), bool(m.training), bool(m.inplace)]),
    nn.Dropout2d: lambda m, x, t: ("dropout2d", [x, float(m.p), bool(m.training), bool(m.inplace)]),
    nn.Flatten: lambda m, x, t: ("flatten", [x, m.start_dim, m.end_dim]),
    nn.Identity: _plain("identity"),
}


# --- function rules: (spec, build(bound args) -> (op, args)); the specs become signatures below -----
def _no(cond: bool, what: str):
    _need(not cond, what)


def _act(op):
    return (["input", ("inplace", False)], lambda a: (op, [a["input"], bool(a["inplace"])]))


def _unary(op):
    return (["input"], lambda a: (op, [a["input"]]))


def _softmax_fn(op):
    def build(a):
        _no(a["dim"] is None, f"{op} without dim")
        _no(a.get("dtype") is not None, f"{op} with dtype")
        return op, [a["input"], a["dim"]]

    return (["input", ("dim", None), ("_stacklevel", 3), ("dtype", None)], build)


def _conv_fn(a):
    pad = a["padding"] if isinstance(a["padding"], str) else _pair(a["padding"])
    return "conv2d", [a["input"], a["weight"], a["bias"], _pair(a["stride"]), pad, _pair(a["dilation"]), a["groups"]]


def _max_pool_fn(a):
    _no(bool(a["return_indices"]), "max_pool2d with return_indices=True")
    stride = a["stride"] if a["stride"] not in (None, [], ()) else a["kernel_size"]
    return "max_pool2d", [
        a["input"],
        _pair(a["kernel_size"]),
        _pair(stride),
        _pair(a["padding"]),
        _pair(a["dilation"]),
        bool(a["ceil_mode"]),
    ]


def _avg_pool_fn(a):
    stride = a["stride"] if a["stride"] not in (None, [], ()) else a["kernel_size"]
    return "avg_pool2d", [
        a["input"],
        _pair(a["kernel_size"]),
        _pair(stride),
        _pair(a["padding"]),
        bool(a["ceil_mode"]),
        bool(a["count_include_pad"]),
        a["divisor_override"],
    ]


def _adaptive_max_fn(a):
    _no(bool(a["return_indices"]), "adaptive_max_pool2d with return_indices=True")
    return "adaptive_max_pool2d", [a["input"], _size2(a["output_size"])]


def _leaky_fn(a):
    s = float(a["negative_slope"])
    _no(bool(a["inplace"]) and s != 0.01, "leaky_relu(inplace=True) with a slope other than 0.01")
    return "leaky_relu", [a["input"], s, bool(a["inplace"])]


def _elu_fn(a):
    _no(a["alpha"] != 1.0, f"elu with alpha={a['alpha']}")
    return "elu", [a["input"], bool(a["inplace"])]


def _reduce(op):
    def build(a):
        _no(a.get("dtype") is not None, f"{op} with dtype")
        return op, [a["input"], _ints(a["dim"]), bool(a["keepdim"])]

    return (["input", ("dim", None), ("keepdim", False), ("dtype", None)], build)


def _binary(op):
    def build(a):
        _no(a.get("alpha", 1) != 1, f"{op} with alpha")
        _no(a.get("rounding_mode") is not None, f"{op} with rounding_mode")
        return op, [a["input"], a["other"]]

    return (["input", "other", ("alpha", 1), ("rounding_mode", None)], build)


def _shape_args(a):
    """view(2, -1), view((2, -1)) and view([2, -1]) alike."""
    s = a["shape"]
    return s[0] if len(s) == 1 and (isinstance(s[0], list) or _is_ref(s[0])) else list(s)


_FUNCTIONS: dict[Any, tuple] = {}
# F.max_pool2d and torch.max_pool2d: one signature.
_MAX_POOL = (
    [
        "input",
        "kernel_size",
        ("stride", None),
        ("padding", 0),
        ("dilation", 1),
        ("ceil_mode", False),
        ("return_indices", False),
    ],
    _max_pool_fn,
)
for _f in (F.relu, torch.relu):
    _FUNCTIONS[_f] = _act("relu")
_FUNCTIONS.update(
    {
        torch.relu_: (["input"], lambda a: ("relu", [a["input"], True])),
        F.relu_: (["input"], lambda a: ("relu", [a["input"], True])),
        F.relu6: _act("relu6"),
        F.silu: _act("silu"),
        F.hardswish: _act("hardswish"),
        F.leaky_relu: (["input", ("negative_slope", 0.01), ("inplace", False)], _leaky_fn),
        F.elu: (["input", ("alpha", 1.0), ("inplace", False)], _elu_fn),
        F.gelu: (["input", ("approximate", "none")], lambda a: ("gelu", [a["input"], a["approximate"]])),
        torch.tanh: _unary("tanh"),
        F.tanh: _unary("tanh"),
        torch.sigmoid: _unary("sigmoid"),
        F.sigmoid: _unary("sigmoid"),
        F.softmax: _softmax_fn("softmax"),
        torch.softmax: _softmax_fn("softmax"),
        F.log_softmax: _softmax_fn("log_softmax"),
        torch.log_softmax: _softmax_fn("log_softmax"),
        F.conv2d: (
            ["input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)],
            _conv_fn,
        ),
        torch.conv2d: (
            ["input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)],
            _conv_fn,
        ),
        F.batch_norm: (
            [
                "input",
                "running_mean",
                "running_var",
                ("weight", None),
                ("bias", None),
                ("training", False),
                ("momentum", 0.1),
                ("eps", 1e-5),
            ],
            lambda a: (
                "batch_norm",
                [
                    a["input"],
                    a["weight"],
                    a["bias"],
                    a["running_mean"],
                    a["running_var"],
                    None,
                    bool(a["training"]) or a["running_mean"] is None,
                    float(a["momentum"]),
                    float(a["eps"]),
                ],
            ),
        ),
        F.group_norm: (
            ["input", "num_groups", ("weight", None), ("bias", None), ("eps", 1e-5)],
            lambda a: ("group_norm", [a["input"], a["num_groups"], a["weight"], a["bias"], float(a["eps"])]),
        ),
        F.layer_norm: (
            ["input", "normalized_shape", ("weight", None), ("bias", None), ("eps", 1e-5)],
            lambda a: (
                "layer_norm",
                [a["input"], _ints(a["normalized_shape"]), a["weight"], a["bias"], float(a["eps"])],
            ),
        ),
        F.linear: (["input", "weight", ("bias", None)], lambda a: ("linear", [a["input"], a["weight"], a["bias"]])),
        F.max_pool2d: _MAX_POOL,
        torch.max_pool2d: _MAX_POOL,
        F.avg_pool2d: (
            [
                "input",
                "kernel_size",
                ("stride", None),
                ("padding", 0),
                ("ceil_mode", False),
                ("count_include_pad", True),
                ("divisor_override", None),
            ],
            _avg_pool_fn,
        ),
        F.adaptive_avg_pool2d: (
            ["input", "output_size"],
            lambda a: ("adaptive_avg_pool2d", [a["input"], _size2(a["output_size"])]),
        ),
        F.adaptive_max_pool2d: (["input", "output_size", ("return_indices", False)], _adaptive_max_fn),
        F.dropout: (
            ["input", ("p", 0.5), ("training", True), ("inplace", False)],
            lambda a: ("dropout", [a["input"], float(a["p"]), bool(a["training"]), bool(a["inplace"])]),
        ),
        F.dropout2d: (
            ["input", ("p", 0.5), ("training", True), ("inplace", False)],
            lambda a: ("dropout2d", [a["input"], float(a["p"]), bool(a["training"]), bool(a["inplace"])]),
        ),
        torch.dropout: (
            ["input", "p", "train"],
            lambda a: ("dropout", [a["input"], float(a["p"]), bool(a["train"]), False]),
        ),
        torch.flatten: (
            ["input", ("start_dim", 0), ("end_dim", -1)],
            lambda a: ("flatten", [a["input"], a["start_dim"], a["end_dim"]]),
        ),
        torch.reshape: (["input", "shape"], lambda a: ("reshape", [a["input"], _ints(a["shape"])])),
        torch.permute: (["input", "dims"], lambda a: ("permute", [a["input"], _ints(a["dims"])])),
        torch.transpose: (["input", "dim0", "dim1"], lambda a: ("transpose", [a["input"], a["dim0"], a["dim1"]])),
        torch.unsqueeze: (["input", "dim"], lambda a: ("unsqueeze", [a["input"], a["dim"]])),
        torch.detach: (["input"], lambda a: ("detach", [a["input"]])),
        torch.mean: _reduce("mean"),
        torch.sum: _reduce("sum"),
        torch.cat: (["tensors", ("dim", 0)], lambda a: ("cat", [a["tensors"], a["dim"]])),
        torch.matmul: (["input", "other"], lambda a: ("matmul", [a["input"], a["other"]])),
        operator.matmul: (["input", "other"], lambda a: ("matmul", [a["input"], a["other"]])),
        torch.add: _binary("add"),
        torch.sub: _binary("sub"),
        torch.mul: _binary("mul"),
        torch.div: _binary("div"),
        operator.add: _binary("add"),
        operator.sub: _binary("sub"),
        operator.mul: _binary("mul"),
        operator.truediv: _binary("div"),
        operator.floordiv: _binary("floordiv"),
        operator.neg: (["input"], lambda a: ("neg", [a["input"]])),
        torch.neg: (["input"], lambda a: ("neg", [a["input"]])),
        operator.getitem: (["input", "index"], lambda a: ("getitem", [a["input"], _int_index(a["index"])])),
        getattr: (["input", "name"], lambda a: _getattr(a)),
    }
)
for _alias in ("concat", "concatenate"):
    if hasattr(torch, _alias):
        _FUNCTIONS[getattr(torch, _alias)] = _FUNCTIONS[torch.cat]


def _int_index(i):
    _need(
        isinstance(i, int) and not isinstance(i, bool), f"indexing with {type(i).__name__} (only sizes can be indexed)"
    )
    return i


def _getattr(a):
    _need(a["name"] == "shape", f"the attribute .{a['name']}")
    return "size", [a["input"], None]


def _method(spec, build):
    return (["input"] + spec, build)


_METHODS: dict[str, tuple] = {
    "size": _method([("dim", None)], lambda a: ("size", [a["input"], a["dim"]])),
    "view": _method(["*shape"], lambda a: ("view", [a["input"], _shape_args(a)])),
    "reshape": _method(["*shape"], lambda a: ("reshape", [a["input"], _shape_args(a)])),
    "permute": _method(["*shape"], lambda a: ("permute", [a["input"], _shape_args(a)])),
    "flatten": _method(
        [("start_dim", 0), ("end_dim", -1)], lambda a: ("flatten", [a["input"], a["start_dim"], a["end_dim"]])
    ),
    "transpose": _method(["dim0", "dim1"], lambda a: ("transpose", [a["input"], a["dim0"], a["dim1"]])),
    "unsqueeze": _method(["dim"], lambda a: ("unsqueeze", [a["input"], a["dim"]])),
    "contiguous": _method([], lambda a: ("contiguous", [a["input"]])),
    "detach": _method([], lambda a: ("detach", [a["input"]])),
    "mean": _reduce("mean"),
    "sum": _reduce("sum"),
    "relu": _method([], lambda a: ("relu", [a["input"], False])),
    "relu_": _method([], lambda a: ("relu", [a["input"], True])),
    "sigmoid": _method([], lambda a: ("sigmoid", [a["input"]])),
    "tanh": _method([], lambda a: ("tanh", [a["input"]])),
    "softmax": _method([("dim", None), ("dtype", None)], _softmax_fn("softmax")[1]),
    "log_softmax": _method([("dim", None), ("dtype", None)], _softmax_fn("log_softmax")[1]),
    "add": _binary("add"),
    "sub": _binary("sub"),
    "mul": _binary("mul"),
    "div": _binary("div"),
    "neg": _method([], lambda a: ("neg", [a["input"]])),
    "matmul": _method(["other"], lambda a: ("matmul", [a["input"], a["other"]])),
}


# Each rule's argument list ([name, (name, default), "*name"]) as a signature, made once.
_FUNCTIONS = {k: (signature(spec), build) for k, (spec, build) in _FUNCTIONS.items()}
_METHODS = {k: (signature(spec), build) for k, (spec, build) in _METHODS.items()}


_SETTINGS = (bool, int, float, str, type(None), tuple, list, dict, set, frozenset)


def _value_key(v) -> Any:
    """A value as a capture depends on it: settings by content (a dict read in forward included),
    anything else (a function attribute such as ``self.act = torch.tanh``, an object) by identity."""
    if isinstance(v, (torch.Tensor, nn.Module)):
        return None  # tensors are re-bound, modules fingerprinted by themselves
    if isinstance(v, _SETTINGS):
        return repr(v)
    return (type(v).__qualname__, id(v))


def _code_names(code: types.CodeType) -> frozenset:
    """Every name the code (and the functions and comprehensions inside it) looks up."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _code_names(c)
    return frozenset(names)


def _globals_read(fn) -> tuple:
    """The module-level values a forward reads as it runs (a flag, a config dict, a function), and
    for a module object it reads (``cfg.ACT``) the attributes named in the code. A trace records the
    values these had; a later change must capture again."""
    code, g = getattr(fn, "__code__", None), getattr(fn, "__globals__", None)
    if code is None or g is None:
        return ()
    names = _code_names(code)
    out = []
    for n in sorted(names & g.keys()):
        v = g[n]
        if isinstance(v, types.ModuleType):
            if v.__name__.split(".")[0] in ("torch", "builtins", "math", "operator"):
                continue  # libraries, whose functions the graph rules name
            out.append((n, tuple((a, _value_key(getattr(v, a))) for a in sorted(names) if hasattr(v, a))))
        else:
            out.append((n, _value_key(v)))
    return tuple(out)


def fingerprint(module: nn.Module) -> tuple:
    """What a capture depends on besides the tensors: each submodule (by identity and class), its
    attributes (settings by value: kernel sizes, dropout p, a dict read in forward; functions and
    other objects by identity), its hooks, its forward (replaced on the instance or on the class),
    and the module-level values that forward reads. ``training`` is left out: both modes are
    captured. What this cannot see (a value read by a helper in another module, a random draw) is
    caught by ``verify``."""
    parts = []
    for name, m in module.named_modules():
        settings = tuple(
            sorted(
                (k, _value_key(v))
                for k, v in vars(m).items()
                if not k.startswith("_") and k != "training" and k != "forward"
            )
        )
        forward = vars(m).get("forward") or type(m).forward
        own = not type(m).__module__.startswith("torch.")
        reads = _globals_read(getattr(forward, "__func__", forward)) if own else ()
        parts.append((name, id(m), type(m), id(forward), _hooks(m), settings, reads))
    return tuple(parts)


def verify(module: nn.Module, native: _rs.NativeModel, shape: tuple | None) -> bool:
    """Whether the eval graph still answers as the module's own forward does, on one sample of
    ``shape`` (C, H, W) drawn from a private generator (the caller's random stream is untouched).
    True when there is nothing to compare (the eager fallback, or no known input shape)."""
    if shape is None or not native.is_graph:
        return True
    p = next(iter(module.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn((1, *shape), generator=g).to(device)
    was = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            want = module(x)
            got = native.forward(x, train=False)
    except Exception:
        return True  # a forward that fails on this sample is judged on real data, as before
    finally:
        for m, mode in was.items():
            m.training = mode
    if not isinstance(want, torch.Tensor) or want.shape != got.shape:
        return False
    return bool(torch.allclose(want.float(), got.float(), rtol=1e-4, atol=1e-5))
