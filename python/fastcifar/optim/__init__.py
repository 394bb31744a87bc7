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

import math
from typing import Optional

import torch

from . import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]


def _num(name, v, lo=0.0, hi=math.inf, hi_open=False):
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v and (v < hi if hi_open else v <= hi)):
        raise ValueError(f"{name}: {v!r} must be a number in [{lo}, {hi}{')' if hi_open else ']'}")
    return float(v)


def _refuse(name: str, value, default, why: str = ""):
    if value != default:
        raise ValueError(f"{name}: {value!r} is not supported by the Rust update{why}; pass torch.optim's optimizer "
                         f"instead (fastcifar.Trainer runs its own step())")


class Optimizer:
    """Settings of an optimizer for the Rust loop, with torch.optim's ``param_groups``,
    ``state_dict`` and ``load_state_dict``."""

    name = ""

    def __init__(self, params=None, lr: float = 1e-3):
        if params is not None:
            params = list(params)
            if params and isinstance(params[0], dict):
                raise ValueError("params: parameter groups (dicts) need torch.optim's optimizer, which fastcifar.Trainer accepts "
                                 "(fastcifar's optimizers have one group)")
            if params and isinstance(params[0], tuple):
                params = [p for _, p in params]  # named parameters, as torch 2.11 accepts
            if not params or not all(isinstance(p, torch.Tensor) for p in params):
                raise TypeError("params: expected a non-empty iterable of tensors from model.parameters()")
        self.params = params
        self._trainer = None
        self.param_groups = [{"lr": _num("lr", lr), **self._group(), "params": params or []}]

    @property
    def lr(self) -> float:
        return float(self.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        """The same as ``param_groups[0]["lr"] = value``: the next step of a fit uses it."""
        self.param_groups[0]["lr"] = _num("lr", value)

    def _group(self) -> dict:
        return {}

    def settings(self) -> dict:
        """The hyper-parameters the Rust update takes (read from ``param_groups[0]``)."""
        return {"lr": self.lr}

    def step(self, closure=None):
        raise RuntimeError(f"fastcifar.optim.{self.name} is run by fastcifar.Trainer.fit; in a loop of your own, use "
                           f"torch.optim.{self.name}(model.parameters(), ...) (Trainer accepts that too)")

    def zero_grad(self, set_to_none: bool = True):
        self.step()

    def state_dict(self) -> dict:
        """The state in torch.optim's format (``state`` / ``param_groups``)."""
        if self._trainer is None:
            raise RuntimeError(f"{self.name} has no state before a Trainer binds it to a model")
        name, lr, initial_lr, h, states = self._trainer._native.optimizer_state()
        names = ("momentum_buffer", None) if name == "SGD" else ("exp_avg", "exp_avg_sq")
        state = {}
        for i, s in enumerate(states):
            if s is None:
                continue
            step, a, b = s
            entry = {"step": torch.tensor(step)}
            if a is not None:
                entry[names[0]] = a
            if b is not None and names[1]:
                entry[names[1]] = b
            state[i] = entry
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group.update(lr=lr, initial_lr=initial_lr, params=list(range(len(states))))
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
        names = ("momentum_buffer", None) if self.name == "SGD" else ("exp_avg", "exp_avg_sq")
        states = []
        for i in range(n):
            s = state.get(i, state.get(str(i)))
            if s is None:
                states.append(None)
                continue
            step = float(s.get("step", 0))
            states.append((step, s.get(names[0]), s.get(names[1]) if names[1] else None))
        momentum = group.get("momentum", group.get("betas", (0.0,))[0] if "betas" in group else 0.0)
        self._trainer._native.load_optimizer_state(float(group["lr"]), float(momentum), states)
        for k, v in group.items():
            if k in self.param_groups[0] and k != "params":
                self.param_groups[0][k] = v

    def __repr__(self):
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.settings().items())})"


class SGD(Optimizer):
    """torch.optim.SGD's signature and update."""

    name = "SGD"

    def __init__(self, params=None, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False, foreach: Optional[bool] = None,
                 differentiable: bool = False, fused: Optional[bool] = None):
        _refuse("maximize", maximize, False)
        _refuse("differentiable", differentiable, False)
        _refuse("fused", bool(fused), False, " (its rounding differs from the single-tensor update)")
        self._args = (_num("momentum", momentum), _num("dampening", dampening), _num("weight_decay", weight_decay), bool(nesterov))
        if nesterov and (self._args[0] <= 0 or self._args[1] != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening = 0")
        super().__init__(params, lr)
        self.param_groups[0]["foreach"] = foreach  # how torch would vectorise: the Rust update does not need it

    def _group(self):
        m, d, wd, n = self._args
        return {"momentum": m, "dampening": d, "weight_decay": wd, "nesterov": n, "maximize": False, "foreach": None,
                "differentiable": False, "fused": None}

    def settings(self):
        g = self.param_groups[0]
        return {"lr": self.lr, "momentum": float(g["momentum"]), "dampening": float(g["dampening"]),
                "weight_decay": float(g["weight_decay"]), "nesterov": float(bool(g["nesterov"]))}


class Adam(Optimizer):
    """torch.optim.Adam's signature and update: L2 weight decay added to the gradient."""

    name = "Adam"
    _default_wd = 0.0

    def __init__(self, params=None, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: Optional[float] = None,
                 amsgrad: bool = False, *, foreach: Optional[bool] = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = None, decoupled_weight_decay: bool = False):
        _refuse("amsgrad", amsgrad, False)
        _refuse("maximize", maximize, False)
        _refuse("differentiable", differentiable, False)
        _refuse("fused", bool(fused), False, " (its rounding differs from the single-tensor update)")
        if decoupled_weight_decay and self.name == "Adam":
            raise ValueError("decoupled_weight_decay: use fastcifar.optim.AdamW (the same update)")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas: expected a pair, got {betas!r}")
        self._args = ((_num("betas", betas[0], 0.0, 1.0, True), _num("betas", betas[1], 0.0, 1.0, True)), _num("eps", eps),
                      _num("weight_decay", self._default_wd if weight_decay is None else weight_decay))
        super().__init__(params, lr)
        self.param_groups[0].update(foreach=foreach, capturable=bool(capturable))

    @property
    def betas(self):
        return tuple(self.param_groups[0]["betas"])

    def _group(self):
        betas, eps, wd = self._args
        return {"betas": betas, "eps": eps, "weight_decay": wd, "amsgrad": False, "maximize": False, "foreach": None,
                "capturable": False, "differentiable": False, "fused": None, "decoupled_weight_decay": self.name == "AdamW"}

    def settings(self):
        g = self.param_groups[0]
        return {"lr": self.lr, "beta1": float(g["betas"][0]), "beta2": float(g["betas"][1]), "eps": float(g["eps"]),
                "weight_decay": float(g["weight_decay"])}


class AdamW(Adam):
    """torch.optim.AdamW's signature and update: decoupled weight decay (default 1e-2)."""

    name = "AdamW"
    _default_wd = 1e-2

    def __init__(self, params=None, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False, foreach: Optional[bool] = None, capturable: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused)


# Kept for code that reached the base class by its old private name.
_Schedule = lr_scheduler._Schedule
