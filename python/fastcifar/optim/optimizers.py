"""fastcifar's optimizers (SGD, Adam, AdamW: settings for the Rust update) and Lookahead."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .. import _native as _rs
from .._defaults import ADAM, ADAMW, LOOKAHEAD
from .._defaults import SGD as _SGD
from .engine_settings import engine_config, hyper_value, momentum_of

if TYPE_CHECKING:
    from ..engine.seam import Engine

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Lookahead"]


def _float(v):
    """A number as float once the core accepted it (anything else is passed on for the core's
    TypeError, which names the setting)."""
    return float(v) if isinstance(v, (int, float)) else v


def _refuse(name: str, value, default, why: str = ""):
    if value != default:
        raise ValueError(
            f"{name}: {value!r} is not supported by the Rust update{why}; pass torch.optim's optimizer "
            f"instead (fastcifar.Trainer runs its own step())"
        )


_GROUP_KEYS = ("params", "lr", "weight_decay")


def _tensors(params) -> list:
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    if params and isinstance(params[0], tuple):
        params = [p for _, p in params]  # named parameters, as torch 2.11 accepts
    return params


def _parse_groups(name: str, groups: list) -> list:
    """torch.optim's parameter groups as (tensors, {"lr": ..., "weight_decay": ...} given)."""
    out: list = []
    seen: set[int] = set()
    for i, g in enumerate(groups):
        if not isinstance(g, dict):
            raise TypeError(f"params: group {i} is a {type(g).__name__}; give every group as a dict")
        if "params" not in g:
            raise TypeError(f"params: group {i} has no 'params' entry")
        unknown = sorted(set(g) - set(_GROUP_KEYS))
        if unknown:
            raise ValueError(
                f"params: group {i} sets {unknown}; a group of fastcifar's optimizers sets only lr and weight_decay "
                f"(the other settings are the optimizer's): for other per-group settings pass "
                f"torch.optim.{name}, which fastcifar.Trainer takes"
            )
        ps = _tensors(g["params"])
        if not ps or not all(isinstance(p, torch.Tensor) for p in ps):
            raise TypeError(f"params: group {i}'s 'params' must be a non-empty iterable of the model's tensors")
        if any(id(p) in seen for p in ps):
            raise ValueError("params: some parameters appear in more than one group")
        seen.update(id(p) for p in ps)
        out.append((ps, {k: hyper_value(g[k]) for k in ("lr", "weight_decay") if k in g}))
    return out


class Optimizer:
    """Settings of an optimizer for the Rust loop, with torch.optim's ``param_groups``,
    ``state_dict`` and ``load_state_dict``."""

    name = ""

    def __init__(self, params=None, lr: float = 1e-3):
        groups = None
        if params is not None:
            params = list(params)
            if params and isinstance(params[0], dict):
                groups = _parse_groups(self.name, params)
                params = [p for ps, _ in groups for p in ps]
            params = _tensors(params)
            if not params or not all(isinstance(p, torch.Tensor) for p in params):
                raise TypeError("params: expected a non-empty iterable of tensors from model.parameters()")
        self.params = params
        self._engine: Engine | None = None
        group = {"lr": hyper_value(lr), **self._group()}
        engine_config(self.name, group)  # raises now, as torch's constructor does, naming the setting
        # Without groups: None, and param_groups[0] holds every setting. With groups: each group's
        # rate as a multiple of the optimizer's (_base), and the optimizer's own weight decay.
        self._scales: list[float] | None = None
        self._base = float(group["lr"])
        self._default_wd = group.get("weight_decay")
        if groups is None:
            self.param_groups = [{**group, "lr": float(group["lr"]), "params": params or []}]
            return
        self.param_groups = []
        for ps, own in groups:
            g = {**group, **own}
            engine_config(self.name, g)  # the group's own lr and weight_decay, named as torch names them
            self.param_groups.append({**g, "lr": float(g["lr"]), "params": ps})
        if self._base == 0 and any(g["lr"] for g in self.param_groups):
            raise ValueError(
                "lr: 0 with parameter groups that set their own rate; each group's rate is a multiple of the "
                "optimizer's lr (the one schedules move), so give the optimizer a rate above 0"
            )
        self._scales = [g["lr"] / self._base if self._base else 1.0 for g in self.param_groups]
        self._wds = [float(hyper_value(g["weight_decay"])) for g in self.param_groups]

    def attach(self, engine: Engine) -> None:
        """Binds the optimizer to the training loop that runs it (``fastcifar.Trainer`` calls this
        with its ``fastcifar.engine.seam.Engine``): its state and rate are then the engine's."""
        self._engine = engine

    @property
    def engine(self) -> Engine | None:
        """The ``Engine`` a Trainer attached (see ``attach``); None before a Trainer binds it."""
        return self._engine

    @property
    def lr(self) -> float:
        """The optimizer's rate (with parameter groups, each group's is its multiple of it)."""
        return float(self.param_groups[0]["lr"]) if self._scales is None else self._base

    @lr.setter
    def lr(self, value: float) -> None:
        """The same as ``param_groups[0]["lr"] = value`` (checked): the next step of a fit uses it.
        With parameter groups, every group's rate moves, keeping its multiple."""
        engine_config(self.name, {**self._shared(), "lr": hyper_value(value)})
        self._set_rate(float(hyper_value(value)))

    def _set_rate(self, lr: float) -> None:
        """Writes the optimizer's rate now (what the engine runs) into ``param_groups``."""
        if self._scales is None:
            self.param_groups[0]["lr"] = lr
            return
        self._base = lr
        for g, s in zip(self.param_groups, self._scales):
            g["lr"] = lr * s

    def _shared(self) -> dict:
        """The settings of the whole optimizer (without groups, ``param_groups[0]``)."""
        if self._scales is None:
            return self.param_groups[0]
        return {**self.param_groups[0], "lr": self._base, "weight_decay": self._default_wd}

    def _engine_groups(self):
        """Per parameter (in ``params`` order): its rate as a multiple of the optimizer's, and its
        weight decay; None without groups."""
        if self._scales is None:
            return None
        scales, wds = [], []
        for g, s, wd in zip(self.param_groups, self._scales, self._wds):
            scales += [s] * len(g["params"])
            wds += [wd] * len(g["params"])
        return scales, wds

    def _group_spec(self):
        """The groups as checkpoints hold them: ([param names], lr multiple, weight decay) per
        group, the names from ``model``; None without groups."""
        if self._scales is None or self._engine is None:
            return None
        name_of = {id(p): n for n, p in self._engine.named_parameters()}
        return [
            [[name_of.get(id(p), "?") for p in g["params"]], s, wd]
            for g, s, wd in zip(self.param_groups, self._scales, self._wds)
        ]

    def _written(self, written: bool = True) -> _rs.OptimizerConfig:
        """The engine's settings from ``param_groups`` (written by the user between steps). With
        groups, every setting but the rate and weight decay is shared, each group keeps its
        multiple of the rate, and weight decays stay: a write that breaks that is refused."""
        if self._scales is None:
            return engine_config(self.name, self.param_groups[0], written)
        first = self.param_groups[0]
        fix = f"use torch.optim.{self.name} with these groups (fastcifar.Trainer runs its own step())"
        for i, g in enumerate(self.param_groups[1:], 1):
            for k, v in g.items():
                if k not in _GROUP_KEYS and first.get(k) != v:
                    raise ValueError(
                        f"param_groups[{i}]['{k}']: {v!r}, group 0's is {first.get(k)!r}; fastcifar's optimizers "
                        f"share every setting but lr and weight_decay across groups: set them in every group, or {fix}"
                    )
        lrs = [float(hyper_value(g["lr"])) for g in self.param_groups]
        scales = self._scales

        def fits(base: float) -> list[bool]:
            return [math.isclose(lr, base * s, rel_tol=1e-9, abs_tol=1e-300) for lr, s in zip(lrs, scales)]

        # Every group moved by one factor (optimizer.lr = x, or a loop over the groups): the new rate.
        k = next((i for i, s in enumerate(self._scales) if s), 0)
        base = lrs[k] / (self._scales[k] or 1.0)
        if not all(fits(base)):
            i = fits(self._base).index(False)  # a group written on its own
            raise ValueError(
                f"param_groups[{i}]['lr']: {lrs[i]!r} is not {self._scales[i]:g} times the optimizer's rate "
                f"({self._base!r}), as the groups were made; set optimizer.lr = x (every group keeps its multiple), "
                f"or {fix}"
            )
        for i, g in enumerate(self.param_groups):
            if float(hyper_value(g["weight_decay"])) != self._wds[i]:
                raise ValueError(
                    f"param_groups[{i}]['weight_decay']: a group's weight decay is fixed when the optimizer is "
                    f"made (it was {self._wds[i]!r}); {fix}"
                )
        return engine_config(self.name, {**first, "lr": base, "weight_decay": self._default_wd}, written)

    def _group(self) -> dict:
        return {}

    def settings(self) -> dict:
        """The hyper-parameters the Rust update takes (read from ``param_groups[0]``; with groups,
        the optimizer's own rate and weight decay)."""
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
        if self._engine is None:
            raise RuntimeError(f"{self.name} has no state before a Trainer binds it to a model")
        st = self._engine.optimizer_state()
        state = {i: {**s, "step": torch.tensor(s["step"])} for i, s in enumerate(st.params) if s is not None}
        groups, start = [], 0
        for g, scale in zip(self.param_groups, self._scales or [1.0]):
            n = len(g["params"]) if self._scales is not None else len(st.params)
            entry = {k: v for k, v in g.items() if k != "params"}
            entry.update(lr=st.lr * scale, initial_lr=st.initial_lr * scale, params=list(range(start, start + n)))
            groups.append(entry)
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        if self._engine is None:
            raise RuntimeError(f"{self.name} has no state before a Trainer binds it to a model")
        try:
            groups = list(sd["param_groups"])
            sizes = [len(g["params"]) for g in groups]
            state = sd["state"]
            lrs = [float(hyper_value(g["lr"])) for g in groups]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ValueError(f"optimizer_state_dict: not an optimizer state dict ({e!r})") from None
        scales = self._scales or [1.0]
        if len(groups) != len(self.param_groups) or (
            self._scales is not None and sizes != [len(g["params"]) for g in self.param_groups]
        ):
            raise ValueError(
                f"optimizer_state_dict: parameter groups of {sizes} parameters, this optimizer's have "
                f"{[len(g['params']) for g in self.param_groups]}"
            )
        k = next((i for i, s in enumerate(scales) if s), 0) if self._scales is not None else 0
        lr = lrs[k] / (scales[k] or 1.0)
        states = [state.get(i, state.get(str(i))) for i in range(sum(sizes))]
        self._engine.load_optimizer_state(lr=lr, momentum=momentum_of(groups[0]), states=states)
        for mine, theirs in zip(self.param_groups, groups):
            for key, v in theirs.items():
                if key in mine and key != "params":
                    mine[key] = v
        self._set_rate(lr)

    def __repr__(self):
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.settings().items())})"


class SGD(Optimizer):
    """torch.optim.SGD's signature and update."""

    name = "SGD"

    def __init__(
        self,
        params=None,
        lr: float = _SGD["lr"],
        momentum: float = _SGD["momentum"],
        dampening: float = _SGD["dampening"],
        weight_decay: float = _SGD["weight_decay"],
        nesterov: bool = _SGD["nesterov"],
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ):
        _refuse("maximize", maximize, False)
        _refuse("differentiable", differentiable, False)
        _refuse("fused", bool(fused), False, " (its rounding differs from the single-tensor update)")
        self._args = (hyper_value(momentum), hyper_value(dampening), hyper_value(weight_decay), bool(nesterov))
        super().__init__(params, lr)
        for g in self.param_groups:
            g["foreach"] = foreach  # how torch would vectorise: the Rust update does not need it

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
        g = self._shared()
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
    _default_wd = ADAM["weight_decay"]

    def __init__(
        self,
        params=None,
        lr: float = ADAM["lr"],
        betas=ADAM["betas"],
        eps: float = ADAM["eps"],
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
            (hyper_value(betas[0]), hyper_value(betas[1])),
            hyper_value(eps),
            hyper_value(self._default_wd if weight_decay is None else weight_decay),
        )
        super().__init__(params, lr)
        for g in self.param_groups:
            g.update(foreach=foreach, capturable=bool(capturable))

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
        g = self._shared()
        return {
            "lr": self.lr,
            "betas": (float(g["betas"][0]), float(g["betas"][1])),
            "eps": float(g["eps"]),
            "weight_decay": float(g["weight_decay"]),
        }


class AdamW(Adam):
    """torch.optim.AdamW's signature and update: decoupled weight decay (default 1e-2)."""

    name = "AdamW"
    _default_wd = ADAMW["weight_decay"]

    def __init__(
        self,
        params=None,
        lr: float = ADAMW["lr"],
        betas=ADAMW["betas"],
        eps: float = ADAMW["eps"],
        weight_decay: float = ADAMW["weight_decay"],
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


class Lookahead:
    """airbench's lookahead: a moving average of the weights that the weights are reset to.

    Every ``every`` optimizer steps (counted over the whole run): the first time, a copy of the
    model's floating-point state (parameters and BatchNorm statistics) starts the average; each
    later time ``ema.lerp_(w, 1 - rho)`` and ``w.copy_(ema)``, with
    ``rho = decay ** every * (step / total_steps) ** power`` (small early, so the weights move
    freely; large at the end, so they settle). At step ``total_steps`` the weights become the
    average. Pass it as ``Trainer(..., lookahead=Lookahead(total_steps=...))``: it runs inside the
    Rust loop, on the device, and checkpoints keep the average.
    """

    def __init__(
        self,
        total_steps: int,
        every: int = LOOKAHEAD["every"],
        decay: float = LOOKAHEAD["decay"],
        power: float = LOOKAHEAD["power"],
    ):
        for name, v in (("total_steps", total_steps), ("every", every)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name}: {v!r} must be an int >= 1 (Lookahead)")
        # The core checks every setting, with its messages.
        self._config = _rs.LookaheadConfig(
            total_steps=total_steps, every=every, decay=hyper_value(decay), power=hyper_value(power)
        )
        self.total_steps, self.every, self.decay, self.power = total_steps, every, float(decay), float(power)

    def settings(self) -> dict:
        """The settings by name (what a checkpoint records)."""
        return self._config.settings()

    def __repr__(self):
        return f"Lookahead({', '.join(f'{k}={v}' for k, v in self.settings().items())})"
