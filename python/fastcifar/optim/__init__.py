"""Optimizers whose update runs inside fastcifar's Rust training loop.

``fastcifar.Trainer`` takes ``torch.optim`` optimizers and schedules as you built them (SGD, Adam
and AdamW run their update in Rust; any other runs its own ``step()``). The classes here are the
same three with ``params`` optional: without it, the Trainer binds the model's trainable
parameters. Signatures (positional order included) and update rules are torch.optim's; a test
compares them step for step on CPU.

    opt = fastcifar.optim.Adam(lr=1e-3, weight_decay=1e-4)          # bound by the Trainer
    opt = fastcifar.optim.Adam(model.fc.parameters(), lr=1e-3)       # trains the head only

They are settings for the Rust loop, so ``step()`` and ``zero_grad()`` refuse: in a loop of your
own, use ``torch.optim``. ``param_groups[0]["lr"] = x`` takes effect at the next step of a fit.
"""

from __future__ import annotations

import torch

from .. import _native as _rs
from . import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]


def _f(v):
    """torch takes 1-element tensors for hyper-parameters: their value."""
    return v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v


def _engine_config(name: str, group: dict, written: bool = False) -> _rs.OptimizerConfig:
    """A torch-style param group's settings for the Rust update. The core checks them (as torch's
    constructor does; settings ``written`` between steps are checked when the loop applies them)."""
    make = _rs.OptimizerConfig.written if written else _rs.OptimizerConfig
    lr, wd = _f(group["lr"]), _f(group.get("weight_decay", 0.0))
    if name == "SGD":
        return make(
            name,
            lr=lr,
            momentum=_f(group.get("momentum", 0.0)),
            dampening=_f(group.get("dampening", 0.0)),
            weight_decay=wd,
            nesterov=bool(group.get("nesterov", False)),
        )
    b1, b2 = group.get("betas", (0.9, 0.999))
    return make(name, lr=lr, betas=(_f(b1), _f(b2)), eps=_f(group.get("eps", 1e-8)), weight_decay=wd)


def _float(v):
    """A number as float once the core accepted it (anything else is passed on for the core's
    TypeError, which names the setting)."""
    return float(v) if isinstance(v, (int, float)) else v


def _momentum(group: dict) -> float:
    """SGD's momentum or Adam's beta1 in a param group."""
    return float(_f(group["betas"][0] if "betas" in group else group.get("momentum", 0.0)))


def _refuse(name: str, value, default, why: str = ""):
    if value != default:
        raise ValueError(
            f"{name}: {value!r} is not supported by the Rust update{why}; pass torch.optim's optimizer "
            f"instead (fastcifar.Trainer runs its own step())"
        )


class Optimizer:
    """Settings of an optimizer for the Rust loop, with torch.optim's ``param_groups``,
    ``state_dict`` and ``load_state_dict``."""

    name = ""

    def __init__(self, params=None, lr: float = 1e-3):
        if params is not None:
            params = list(params)
            if params and isinstance(params[0], dict):
                raise ValueError(
                    "params: parameter groups (dicts) need torch.optim's optimizer, which fastcifar.Trainer accepts "
                    "(fastcifar's optimizers have one group)"
                )
            if params and isinstance(params[0], tuple):
                params = [p for _, p in params]  # named parameters, as torch 2.11 accepts
            if not params or not all(isinstance(p, torch.Tensor) for p in params):
                raise TypeError("params: expected a non-empty iterable of tensors from model.parameters()")
        self.params = params
        self._trainer = None
        group = {"lr": _f(lr), **self._group()}
        _engine_config(self.name, group)  # raises now, as torch's constructor does, naming the setting
        self.param_groups = [{**group, "lr": float(group["lr"]), "params": params or []}]

    @property
    def lr(self) -> float:
        return float(self.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        """The same as ``param_groups[0]["lr"] = value`` (checked): the next step of a fit uses it."""
        _engine_config(self.name, {**self.param_groups[0], "lr": _f(value)})
        self.param_groups[0]["lr"] = float(_f(value))

    def _group(self) -> dict:
        return {}

    def settings(self) -> dict:
        """The hyper-parameters the Rust update takes (read from ``param_groups[0]``)."""
        return {"lr": self.lr}

    def step(self, closure=None):
        raise RuntimeError(
            f"fastcifar.optim.{self.name} is run by fastcifar.Trainer.fit; in a loop of your own, use "
            f"torch.optim.{self.name}(model.parameters(), ...) (Trainer accepts that too)"
        )

    def zero_grad(self, set_to_none: bool = True):
        self.step()

    def state_dict(self) -> dict:
        """The state in torch.optim's format (``state`` / ``param_groups``)."""
        if self._trainer is None:
            raise RuntimeError(f"{self.name} has no state before a Trainer binds it to a model")
        st = self._trainer._native.optimizer_state()
        state = {i: {**s, "step": torch.tensor(s["step"])} for i, s in enumerate(st.params) if s is not None}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group.update(lr=st.lr, initial_lr=st.initial_lr, params=list(range(len(st.params))))
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, sd: dict) -> None:
        if self._trainer is None:
            raise RuntimeError(f"{self.name} has no state before a Trainer binds it to a model")
        try:
            group = sd["param_groups"][0]
            n = len(group["params"])
            state = sd["state"]
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"optimizer_state_dict: not an optimizer state dict ({e!r})") from None
        states = [state.get(i, state.get(str(i))) for i in range(n)]
        self._trainer._native.load_optimizer_state(lr=float(_f(group["lr"])), momentum=_momentum(group), states=states)
        for k, v in group.items():
            if k in self.param_groups[0] and k != "params":
                self.param_groups[0][k] = v

    def __repr__(self):
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.settings().items())})"


class SGD(Optimizer):
    """torch.optim.SGD's signature and update."""

    name = "SGD"

    def __init__(
        self,
        params=None,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ):
        _refuse("maximize", maximize, False)
        _refuse("differentiable", differentiable, False)
        _refuse("fused", bool(fused), False, " (its rounding differs from the single-tensor update)")
        self._args = (_f(momentum), _f(dampening), _f(weight_decay), bool(nesterov))
        super().__init__(params, lr)
        self.param_groups[0]["foreach"] = foreach  # how torch would vectorise: the Rust update does not need it

    def _group(self):
        m, d, wd, n = self._args
        return {
            "momentum": _float(m),
            "dampening": _float(d),
            "weight_decay": _float(wd),
            "nesterov": n,
            "maximize": False,
            "foreach": None,
            "differentiable": False,
            "fused": None,
        }

    def settings(self):
        g = self.param_groups[0]
        return {
            "lr": self.lr,
            "momentum": float(g["momentum"]),
            "dampening": float(g["dampening"]),
            "weight_decay": float(g["weight_decay"]),
            "nesterov": bool(g["nesterov"]),
        }


class Adam(Optimizer):
    """torch.optim.Adam's signature and update: L2 weight decay added to the gradient."""

    name = "Adam"
    _default_wd = 0.0

    def __init__(
        self,
        params=None,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ):
        _refuse("amsgrad", amsgrad, False)
        _refuse("maximize", maximize, False)
        _refuse("differentiable", differentiable, False)
        _refuse("fused", bool(fused), False, " (its rounding differs from the single-tensor update)")
        if decoupled_weight_decay and self.name == "Adam":
            raise ValueError("decoupled_weight_decay: use fastcifar.optim.AdamW (the same update)")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas: expected a pair, got {betas!r}")
        self._args = (
            (_f(betas[0]), _f(betas[1])),
            _f(eps),
            _f(self._default_wd if weight_decay is None else weight_decay),
        )
        super().__init__(params, lr)
        self.param_groups[0].update(foreach=foreach, capturable=bool(capturable))

    @property
    def betas(self):
        return tuple(self.param_groups[0]["betas"])

    def _group(self):
        (b1, b2), eps, wd = self._args
        return {
            "betas": (_float(b1), _float(b2)),
            "eps": _float(eps),
            "weight_decay": _float(wd),
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": self.name == "AdamW",
        }

    def settings(self):
        g = self.param_groups[0]
        return {
            "lr": self.lr,
            "beta1": float(g["betas"][0]),
            "beta2": float(g["betas"][1]),
            "eps": float(g["eps"]),
            "weight_decay": float(g["weight_decay"]),
        }


class AdamW(Adam):
    """torch.optim.AdamW's signature and update: decoupled weight decay (default 1e-2)."""

    name = "AdamW"
    _default_wd = 1e-2

    def __init__(
        self,
        params=None,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ):
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )


# Kept for code that reached the base class by its old private name.
_Schedule = lr_scheduler._Schedule
