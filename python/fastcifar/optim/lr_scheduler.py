"""Learning-rate schedules that run inside fastcifar's Rust training loop, with
``torch.optim.lr_scheduler``'s signatures (positional order included) and formulas.

    from fastcifar.optim.lr_scheduler import StepLR
    StepLR(optimizer, 2, 0.5)          # as torch: step_size=2, gamma=0.5
    StepLR(step_size=2, gamma=0.5)     # the optimizer may be left out: the Trainer binds it

Every argument torch accepts is either honoured or refused by name. They are stepped by
``Trainer.fit`` (per epoch, or per optimizer step for OneCycleLR), so ``step()`` refuses; in a loop
of your own use ``torch.optim.lr_scheduler``, whose objects ``fastcifar.Trainer`` also accepts.
"""

from __future__ import annotations

import inspect

import torch

from .. import _native as _rs
from .._args import BindError, bind, signature, whole
from .._defaults import COSINE, ONE_CYCLE, PLATEAU, STEP_LR

__all__ = ["StepLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau", "PiecewiseLinear", "LinearWarmup"]


def _is_optimizer(o) -> bool:
    from .optimizers import Optimizer

    return isinstance(o, (Optimizer, torch.optim.Optimizer))


_REQUIRED = inspect.Parameter.empty


def _bind(cls_name: str, sig: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """torch's signature ``(optimizer, *names)``: positional in that order, or by keyword. The
    optimizer may be left out (a first positional that is not an optimizer is the next argument):
    it is then None. What does not bind is a TypeError worded as Python's."""
    if "optimizer" not in kwargs and not (args and (_is_optimizer(args[0]) or args[0] is None)):
        args = (None,) + tuple(args)
    try:
        out = bind(sig, args, kwargs)
    except BindError as e:
        if e.kind == "missing":  # a wrong optimizer is named first, as before a missing setting
            _check_optimizer(kwargs["optimizer"] if "optimizer" in kwargs else args[0])
        raise TypeError(
            {
                "positional": f"{cls_name}() takes at most {e.limit} positional arguments ({e.given} given)",
                "unexpected": f"{cls_name}() got an unexpected keyword argument '{e.name}'",
                "twice": f"{cls_name}() got multiple values for argument '{e.name}'",
                "missing": f"{cls_name}() missing required argument: '{e.name}'",
            }[e.kind]
        ) from None
    _check_optimizer(out["optimizer"])
    return out


def _check_optimizer(o) -> None:
    if o is not None and not _is_optimizer(o):
        raise TypeError(f"optimizer: expected an optimizer, got {type(o).__name__}")


class _Schedule:
    """A schedule's settings for the Rust loop; ``Trainer`` binds it to the optimizer."""

    name = ""
    # torch's arguments after the optimizer: (name, default), _REQUIRED for none.
    _names: list = []
    _signature: inspect.Signature = signature(["optimizer"])

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        # One signature binds the arguments and is what help() and inspect.signature show: torch's,
        # with the core's defaults.
        cls._signature = signature([("optimizer", _REQUIRED)] + list(cls._names))
        cls.__signature__ = cls._signature

    def __init__(self, *args, **kwargs):
        a = _bind(type(self).__name__, self._signature, args, kwargs)
        self.optimizer = a.pop("optimizer")
        if a.pop("last_epoch", -1) != -1:
            raise ValueError(
                "last_epoch: only -1 (a fresh schedule) is supported; to resume, load the Trainer's checkpoint, "
                "which holds the schedule's state"
            )
        # The core checks the settings now (as torch's constructors do), naming the one at fault.
        settings = self._configure(**a)  # first: LinearWarmup takes its name from the schedule it wraps
        self._config = _rs.ScheduleConfig(self.name, **settings)

    def _configure(self, **a) -> dict:
        """torch's arguments as the core's settings (ScheduleConfig's keywords)."""
        raise NotImplementedError

    def settings(self) -> dict:
        """The settings by name (as the core holds them: what a checkpoint records)."""
        return self._config.settings()

    def step(self, *a, **k):
        raise RuntimeError(
            f"fastcifar.optim.lr_scheduler.{type(self).__name__} is stepped by fastcifar.Trainer.fit; in a loop of "
            f"your own, use torch.optim.lr_scheduler.{type(self).__name__} (Trainer accepts it too)"
        )

    def get_last_lr(self) -> list:
        """The learning rate of the last step (the trainer's, once bound to one)."""
        from .optimizers import Optimizer

        engine = self.optimizer.engine if isinstance(self.optimizer, Optimizer) else None
        if engine is not None:
            return [engine.current_lr()]
        lr = getattr(self.optimizer, "lr", None)
        return [lr] if lr is not None else []

    def __repr__(self):
        shown = (f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v!r}" for k, v in self.settings().items())
        return f"{self.name}({', '.join(shown)})"


class StepLR(_Schedule):
    """lr * gamma ** (epoch // step_size)."""

    name = "StepLR"
    _names = [("step_size", _REQUIRED), ("gamma", STEP_LR["gamma"]), ("last_epoch", -1)]

    def _configure(self, step_size, gamma):
        return {"step_size": step_size, "gamma": gamma}


class CosineAnnealingLR(_Schedule):
    name = "CosineAnnealingLR"
    _names = [("T_max", _REQUIRED), ("eta_min", COSINE["eta_min"]), ("last_epoch", -1)]

    def _configure(self, T_max, eta_min):
        return {"T_max": T_max, "eta_min": eta_min}


class OneCycleLR(_Schedule):
    """Per-step one-cycle policy (two phases, cosine), cycling momentum / beta1 as torch does.
    Stepping past ``total_steps`` raises, as torch's does."""

    name = "OneCycleLR"
    _names = [
        ("max_lr", _REQUIRED),
        ("total_steps", None),
        ("epochs", None),
        ("steps_per_epoch", None),
        ("pct_start", ONE_CYCLE["pct_start"]),
        ("anneal_strategy", "cos"),
        ("cycle_momentum", ONE_CYCLE["cycle_momentum"]),
        ("base_momentum", ONE_CYCLE["base_momentum"]),
        ("max_momentum", ONE_CYCLE["max_momentum"]),
        ("div_factor", ONE_CYCLE["div_factor"]),
        ("final_div_factor", ONE_CYCLE["final_div_factor"]),
        ("three_phase", False),
        ("last_epoch", -1),
    ]

    def _configure(
        self,
        max_lr,
        total_steps,
        epochs,
        steps_per_epoch,
        pct_start,
        anneal_strategy,
        cycle_momentum,
        base_momentum,
        max_momentum,
        div_factor,
        final_div_factor,
        three_phase,
    ):
        if isinstance(max_lr, (list, tuple)):
            raise ValueError(
                "max_lr: one value per parameter group is for torch.optim.lr_scheduler.OneCycleLR (fastcifar's "
                "optimizers have one group); Trainer accepts torch's schedule with a torch optimizer"
            )
        if anneal_strategy != "cos":
            raise ValueError(
                f"anneal_strategy: only 'cos' is supported here, got {anneal_strategy!r} "
                "(torch.optim.lr_scheduler.OneCycleLR does 'linear', and Trainer accepts it)"
            )
        if three_phase:
            raise ValueError(
                "three_phase: only the two-phase cycle is supported here "
                "(torch.optim.lr_scheduler.OneCycleLR does three_phase=True, and Trainer accepts it)"
            )
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("total_steps: give total_steps, or epochs and steps_per_epoch")
            per_epoch = whole("steps_per_epoch", steps_per_epoch, 1, owner="OneCycleLR")
            total_steps = whole("epochs", epochs, 1, owner="OneCycleLR") * per_epoch
        return {
            "max_lr": max_lr,
            "total_steps": total_steps,
            "pct_start": pct_start,
            "div_factor": div_factor,
            "final_div_factor": final_div_factor,
            "cycle_momentum": bool(cycle_momentum),
            "base_momentum": base_momentum,
            "max_momentum": max_momentum,
        }


class ReduceLROnPlateau(_Schedule):
    """Multiplies the lr by ``factor`` when the monitored metric (validation loss in the seed)
    stops improving for ``patience`` epochs."""

    name = "ReduceLROnPlateau"
    _names = [
        (k, PLATEAU[k])
        for k in ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")
    ]

    def _configure(self, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps):
        if isinstance(min_lr, (list, tuple)):
            raise ValueError(
                "min_lr: one value per parameter group is for torch.optim.lr_scheduler.ReduceLROnPlateau "
                "(fastcifar's optimizers have one group)"
            )
        return {
            "mode": mode,
            "factor": factor,
            "patience": patience,
            "threshold": threshold,
            "threshold_mode": threshold_mode,
            "cooldown": cooldown,
            "min_lr": min_lr,
            "eps": eps,
        }

    @property
    def mode(self) -> str:
        """'min' or 'max', as torch's attribute."""
        return self._config.settings()["mode"]


class PiecewiseLinear(_Schedule):
    """fastcifar's own: per optimizer step, ``lr * factor``, the factor linear between the points
    ``(milestones[i], factors[i])`` (steps; the first is step 0) and the last factor from the last
    point on. torch's ``LambdaLR`` over a piecewise-linear lambda, e.g. airbench's triangle
    ``PiecewiseLinear(milestones=[0, 109, 476], factors=[0.2, 1.0, 0.07])``."""

    name = "PiecewiseLinear"
    _names = [("milestones", _REQUIRED), ("factors", _REQUIRED)]

    def _configure(self, milestones, factors):
        try:
            xs, ys = list(milestones), list(factors)
        except TypeError:
            raise ValueError("milestones, factors: give two lists of the same length (steps and lr factors)") from None
        if any(isinstance(x, bool) or not isinstance(x, int) for x in xs):
            raise ValueError(f"milestones: {xs!r} must be ints (optimizer steps)")
        return {"milestones": xs, "factors": ys}

    @property
    def milestones(self) -> list:
        return list(self.settings()["milestones"])

    @property
    def factors(self) -> list:
        return list(self.settings()["factors"])


class LinearWarmup(_Schedule):
    """fastcifar's own: linear warm-up over ``steps`` optimizer steps from ``start_factor * lr``,
    then ``then`` (another schedule of this module, or a constant lr)."""

    name = "LinearWarmup"
    _names = [("steps", _REQUIRED), ("start_factor", 0.0), ("then", None)]

    def _configure(self, steps, start_factor, then):
        if then is not None and not isinstance(then, _Schedule):
            raise TypeError("then: expected a fastcifar.optim.lr_scheduler schedule")
        self.then = then
        self.name = then.name if then is not None else "Constant"
        base = then.settings() if then is not None else {}
        return {**base, "warmup_steps": steps, "warmup_start_factor": start_factor}


def _restore(name: str, settings: dict) -> _Schedule:
    """A schedule from the name and settings a checkpoint holds."""
    # Its own class where the name is one (repr and isinstance then say OneCycleLR, not _Schedule).
    known = {c.name: c for c in (StepLR, CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau, PiecewiseLinear)}
    s = object.__new__(known.get(name, _Schedule))
    s.name, s._config, s.optimizer = name, _rs.ScheduleConfig(name, **settings), None
    return s
