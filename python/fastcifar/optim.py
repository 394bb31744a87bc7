"""Optimizers and learning-rate schedules that run inside fastcifar's Rust training loop.

They take torch.optim's arguments and follow its update rules step for step (a test compares them
on CPU). Pass them to ``fastcifar.Trainer``; ``params`` is optional (default: every trainable
parameter of the trainer's model), e.g. ``Adam(model.parameters("fc"), lr=1e-3)`` trains the head.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Lookahead", "lr_scheduler"]


def _num(name, v, lo=0.0, hi=math.inf, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v and (v < hi if hi_open else v <= hi)):
        raise ValueError(f"{name}: {v!r} must be a number in [{lo}, {hi}{')' if hi_open else ']'}")
    return float(v)


class Optimizer:
    """Configuration of an optimizer; bound to a model's parameters by ``Trainer``."""

    name = ""

    def __init__(self, params=None, lr: float = 1e-3):
        self.lr = _num("lr", lr)
        # torch.optim's parameter groups: [{"params": [...], "lr": ..., "weight_decay": ...}, ...];
        # each group's own lr and weight decay (the others come from the optimizer's arguments).
        self.groups = None
        if params is not None:
            params = list(params)
            if params and all(isinstance(g, dict) for g in params):
                params = self._parse_groups(params)
            if not params or not all(isinstance(p, torch.Tensor) for p in params):
                raise TypeError("params: expected a non-empty iterable of tensors from model.parameters(), or a list of "
                                "parameter-group dicts with a 'params' entry each")
        self.params = params
        self._trainer = None

    def _parse_groups(self, groups):
        flat, self.groups = [], []
        for i, g in enumerate(groups):
            unknown = set(g) - {"params", "lr", "weight_decay"}
            if unknown:
                raise ValueError(f"params: group {i} sets {sorted(unknown)}; a group may set only lr and weight_decay "
                                 f"(the other hyper-parameters are the optimizer's)")
            if "params" not in g:
                raise TypeError(f"params: group {i} has no 'params' entry")
            ps = [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])
            if not all(isinstance(p, torch.Tensor) for p in ps):
                raise TypeError(f"params: group {i}'s 'params' must be tensors from model.parameters()")
            lr = _num("lr", g["lr"]) if "lr" in g else None
            wd = _num("weight_decay", g["weight_decay"]) if "weight_decay" in g else None
            self.groups.append((len(ps), lr, wd))
            flat += ps
        if len({id(p) for p in flat}) != len(flat):
            raise ValueError("params: some parameters appear in more than one group")
        return flat

    def _group_settings(self):
        """Per parameter (in ``params`` order): its lr as a multiple of ``lr``, and its weight
        decay (None: the optimizer's). None without groups."""
        if not self.groups:
            return None
        scales, wds = [], []
        for n, lr, wd in self.groups:
            scales += [1.0 if lr is None else (lr / self.lr if self.lr else 0.0)] * n
            wds += [wd] * n
        return scales, wds

    def settings(self) -> dict:
        return {"lr": self.lr}

    @property
    def param_groups(self):
        """torch-style view of the parameter groups (one unless groups were given), with the
        current learning rates."""
        lr = self._trainer._native.lr if self._trainer else self.lr
        if not self.groups:
            return [{"lr": lr, **self._group()}]
        out = []
        for _, glr, wd in self.groups:
            g = {"lr": lr if glr is None else lr * glr / self.lr if self.lr else glr, **self._group()}
            if wd is not None and "weight_decay" in g:
                g["weight_decay"] = wd
            out.append(g)
        return out

    def _group(self) -> dict:
        return {}

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
        if not self.groups:
            group = {"lr": lr, "initial_lr": initial_lr, **self._group(), "params": list(range(len(states)))}
            return {"state": state, "param_groups": [group]}
        groups, start = [], 0
        for (n, glr, wd), g in zip(self.groups, self.param_groups):
            scale = 1.0 if glr is None else (glr / self.lr if self.lr else 0.0)
            g.update({"lr": lr * scale, "initial_lr": initial_lr * scale, "params": list(range(start, start + n))})
            groups.append(g)
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        if self._trainer is None:
            raise RuntimeError(f"{self.name} has no state before a Trainer binds it to a model")
        try:
            group = sd["param_groups"][0]
            n = sum(len(g["params"]) for g in sd["param_groups"])
            state = sd["state"]
            lr = float(group["lr"])
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"optimizer_state_dict: not an optimizer state dict ({e!r})") from None
        scales = self._group_settings()
        if scales is not None and scales[0] and scales[0][0]:
            lr /= scales[0][0]  # group 0's rate is its multiple of the optimizer's
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
        self._trainer._native.load_optimizer_state(lr, float(momentum), states)

    def __repr__(self):
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.settings().items())})"


class SGD(Optimizer):
    name = "SGD"

    def __init__(self, params=None, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        self.momentum = _num("momentum", momentum)
        self.dampening = _num("dampening", dampening)
        self.weight_decay = _num("weight_decay", weight_decay)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening = 0")
        self.nesterov = bool(nesterov)

    def settings(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "weight_decay": self.weight_decay, "nesterov": float(self.nesterov)}

    def _group(self):
        return {"momentum": self.momentum, "dampening": self.dampening, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov, "maximize": False, "foreach": None, "differentiable": False, "fused": None}


class Adam(Optimizer):
    """torch.optim.Adam: L2 weight decay added to the gradient."""

    name = "Adam"
    _default_wd = 0.0

    def __init__(self, params=None, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: Optional[float] = None):
        super().__init__(params, lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas: expected a pair, got {betas!r}")
        self.betas = (_num("betas", betas[0], 0.0, 1.0, True), _num("betas", betas[1], 0.0, 1.0, True))
        self.eps = _num("eps", eps)
        self.weight_decay = _num("weight_decay", self._default_wd if weight_decay is None else weight_decay)

    def settings(self):
        return {"lr": self.lr, "beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps, "weight_decay": self.weight_decay}

    def _group(self):
        return {"betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay, "amsgrad": False, "maximize": False,
                "foreach": None, "capturable": False, "differentiable": False, "fused": None,
                "decoupled_weight_decay": self.name == "AdamW"}


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay (default 1e-2)."""

    name = "AdamW"
    _default_wd = 1e-2


class _Schedule:
    name = ""

    def __init__(self, **settings):
        self._settings = {k: float(v) for k, v in settings.items()}

    def settings(self) -> dict:
        return dict(self._settings)

    def __repr__(self):
        return f"{self.name}({', '.join(f'{k}={v:g}' for k, v in self._settings.items())})"


def _skip_optimizer(optimizer, rest):
    """torch's schedulers take the optimizer first; ours know it from the Trainer. Accept both."""
    if optimizer is None or isinstance(optimizer, Optimizer):
        return rest
    return (optimizer,) + rest


class _LrScheduler:
    """Namespace mirroring torch.optim.lr_scheduler."""

    class StepLR(_Schedule):
        """lr * gamma ** (epoch // step_size)."""

        name = "StepLR"

        def __init__(self, optimizer=None, *args, step_size: Optional[int] = None, gamma: float = 0.1):
            args = _skip_optimizer(optimizer, args)
            if args:
                step_size = args[0]
            if not isinstance(step_size, int) or step_size < 1:
                raise ValueError(f"step_size: {step_size!r} must be a positive int")
            super().__init__(step_size=step_size, gamma=_num("gamma", gamma))

    class CosineAnnealingLR(_Schedule):
        name = "CosineAnnealingLR"

        def __init__(self, optimizer=None, *args, T_max: Optional[int] = None, eta_min: float = 0.0):
            args = _skip_optimizer(optimizer, args)
            if args:
                T_max = args[0]
            if not isinstance(T_max, int) or T_max < 1:
                raise ValueError(f"T_max: {T_max!r} must be a positive int (epochs)")
            super().__init__(T_max=T_max, eta_min=_num("eta_min", eta_min))

    class OneCycleLR(_Schedule):
        """Per-step one-cycle policy (cosine), cycling momentum / beta1 as torch does."""

        name = "OneCycleLR"

        def __init__(self, optimizer=None, *args, max_lr: Optional[float] = None, total_steps: Optional[int] = None,
                     epochs: Optional[int] = None, steps_per_epoch: Optional[int] = None, pct_start: float = 0.3,
                     anneal_strategy: str = "cos", cycle_momentum: bool = True, base_momentum: float = 0.85,
                     max_momentum: float = 0.95, div_factor: float = 25.0, final_div_factor: float = 1e4):
            args = _skip_optimizer(optimizer, args)
            if args:
                max_lr = args[0]
            if max_lr is None:
                raise ValueError("max_lr: required")
            if anneal_strategy != "cos":
                raise ValueError(f"anneal_strategy: only 'cos' is supported, got {anneal_strategy!r}")
            if total_steps is None:
                if epochs is None or steps_per_epoch is None:
                    raise ValueError("total_steps: give total_steps, or epochs and steps_per_epoch")
                total_steps = epochs * steps_per_epoch
            super().__init__(max_lr=_num("max_lr", max_lr), total_steps=total_steps, pct_start=pct_start,
                             div_factor=div_factor, final_div_factor=final_div_factor, cycle_momentum=cycle_momentum,
                             base_momentum=base_momentum, max_momentum=max_momentum)

    class ReduceLROnPlateau(_Schedule):
        """Divides the lr by 1/factor when the monitored metric (validation loss) stops improving."""

        name = "ReduceLROnPlateau"

        def __init__(self, optimizer=None, *args, mode: str = "min", factor: float = 0.1, patience: int = 10,
                     threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8):
            args = _skip_optimizer(optimizer, args)
            if args:
                mode = args[0]
            if mode not in ("min", "max"):
                raise ValueError(f"mode: {mode!r} is not 'min' or 'max'")
            if threshold_mode != "rel":
                raise ValueError(f"threshold_mode: only 'rel' is supported, got {threshold_mode!r}")
            if not isinstance(patience, int) or patience < 0:
                raise ValueError(f"patience: {patience!r} must be a non-negative int")
            self.mode = mode
            super().__init__(mode_min=mode == "min", factor=_num("factor", factor, 0.0, 1.0, True), patience=patience,
                             threshold=_num("threshold", threshold), cooldown=cooldown, min_lr=_num("min_lr", min_lr))

    class PiecewiseLinear(_Schedule):
        """Per optimizer step, ``lr * factor``, with the factor linear between ``(milestones[i],
        factors[i])`` points (the first milestone is step 0) and the last factor after the last
        point: torch's ``LambdaLR`` over a piecewise-linear lambda, e.g. airbench's triangle
        ``PiecewiseLinear([0, 109, 476], [0.2, 1.0, 0.07])``."""

        name = "PiecewiseLinear"

        def __init__(self, optimizer=None, *args, milestones=None, factors=None):
            args = _skip_optimizer(optimizer, args)
            if args:
                milestones, factors = (list(args) + [factors])[:2]
            if milestones is None or factors is None or len(milestones) != len(factors) or not len(milestones):
                raise ValueError("milestones, factors: give two lists of the same non-zero length (steps and lr factors)")
            pts = {"points": len(milestones)}
            for i, (x, y) in enumerate(zip(milestones, factors)):
                if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                    raise ValueError(f"milestones: {x!r} must be a non-negative int (an optimizer step)")
                pts[f"x{i}"], pts[f"y{i}"] = x, _num("factors", y)
            super().__init__(**pts)

        @property
        def milestones(self):
            return [int(self._settings[f"x{i}"]) for i in range(int(self._settings["points"]))]

        @property
        def factors(self):
            return [self._settings[f"y{i}"] for i in range(int(self._settings["points"]))]

    class LinearWarmup(_Schedule):
        """Linear warm-up over ``steps`` optimizer steps from ``start_factor * lr``, then ``then``
        (another schedule, or a constant lr)."""

        name = "LinearWarmup"

        def __init__(self, steps: int, start_factor: float = 0.0, then: Optional[_Schedule] = None):
            if not isinstance(steps, int) or steps < 1:
                raise ValueError(f"steps: {steps!r} must be a positive int")
            if then is not None and not isinstance(then, _Schedule):
                raise TypeError("then: expected a fastcifar.optim.lr_scheduler schedule")
            self.then = then
            self.name = then.name if then is not None else "Constant"
            base = then.settings() if then is not None else {}
            super().__init__(**base, warmup_steps=steps, warmup_start_factor=_num("start_factor", start_factor, 0.0, 1.0))


lr_scheduler = _LrScheduler


class Lookahead:
    """airbench's lookahead: a moving average of the weights that the weights are reset to.

    From epoch ``start_epoch`` on, every ``every`` optimizer steps: the first time a copy of the
    model's floating-point state (parameters and BatchNorm statistics) is taken; then
    ``ema.lerp_(w, 1 - rho)`` and ``w.copy_(ema)``, with
    ``rho = decay ** every * (step / total_steps) ** power`` (it grows over training: move fast
    early, average strongly at the end). At the end of each epoch the weights are set to the
    average. Pass it to ``Trainer(..., lookahead=Lookahead(total_steps=...))``; it runs inside the
    Rust loop.
    """

    def __init__(self, total_steps: int, every: int = 5, start_epoch: int = 0, decay: float = 0.95, power: float = 3.0):
        for name, v, lo in (("total_steps", total_steps, 1), ("every", every, 1), ("start_epoch", start_epoch, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: {v!r} must be an int >= {lo}")
        self.total_steps, self.every, self.start_epoch = total_steps, every, start_epoch
        self.decay = _num("decay", decay, 0.0, 1.0)
        self.power = _num("power", power)

    def settings(self) -> dict:
        return {"total_steps": self.total_steps, "every": self.every, "start_epoch": self.start_epoch,
                "decay": self.decay, "power": self.power}

    def __repr__(self):
        return f"Lookahead({', '.join(f'{k}={v}' for k, v in self.settings().items())})"
