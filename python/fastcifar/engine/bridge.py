"""The optimizer and schedule a Trainer was given, as the Rust loop sees them.

Two kinds of optimizer:
- on the engine: fastcifar.optim's (parameter groups included: each with its own rate multiple and
  weight decay), and torch.optim.SGD / Adam / AdamW with one parameter group and the single-tensor
  update (no maximize, amsgrad, fused, capturable, differentiable). The
  update runs in Rust; for torch's, the state is written back into ``optimizer.state`` after every
  epoch (the same tensors, not copies), so ``optimizer.state_dict()`` is what torch would hold.
- outside: any other optimizer (another class, several groups, other flags). The Rust loop hands
  it the gradients (as ``.grad``) and calls its own ``step()`` each optimizer step.

Schedules: fastcifar.optim.lr_scheduler's run in Rust. torch.optim.lr_scheduler's run their own
``step()``: once per epoch (``step(val_loss)`` for ReduceLROnPlateau), or after every optimizer
step for the per-batch ones (OneCycleLR, CyclicLR, or ``scheduler_interval="step"``).

``param_groups`` writes (the user's, or a torch schedule's) reach the engine before the next step.
"""

from __future__ import annotations

import torch

from .. import _native as _rs
from .. import optim as _optim
from ..optim.engine_settings import engine_config, hyper_value, momentum_of

_ENGINE = {torch.optim.SGD: "SGD", torch.optim.Adam: "Adam", torch.optim.AdamW: "AdamW"}
_UNSUPPORTED_FLAGS = ("maximize", "amsgrad", "differentiable", "capturable", "fused")
_PER_STEP = tuple(
    c for c in (getattr(torch.optim.lr_scheduler, n, None) for n in ("OneCycleLR", "CyclicLR")) if c is not None
)


def _watched(name: str, group: dict) -> tuple:
    """The param group's values the Rust update reads (to see when they change between steps)."""
    if name == "SGD":
        return (
            group["lr"],
            group.get("momentum"),
            group.get("dampening"),
            group.get("weight_decay"),
            group.get("nesterov"),
        )
    return (group["lr"], tuple(group.get("betas", ())), group.get("eps"), group.get("weight_decay"))


def engine_name(optimizer) -> str | None:
    """The Rust update that reproduces ``optimizer``, or None when it must run its own step()."""
    if isinstance(optimizer, _optim.Optimizer):
        return optimizer.name
    name = _ENGINE.get(type(optimizer))
    if name is None or len(optimizer.param_groups) != 1:
        return None
    g = optimizer.param_groups[0]
    if any(g.get(k) for k in _UNSUPPORTED_FLAGS):
        return None
    if name == "Adam" and g.get("decoupled_weight_decay"):
        return "AdamW"
    return name


def _is_torch_schedule(s) -> bool:
    return isinstance(s, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))


class Bridge:
    def __init__(self, optimizer, scheduler, model: torch.nn.Module, scheduler_interval: str | None):
        if not isinstance(optimizer, (_optim.Optimizer, torch.optim.Optimizer)):
            raise TypeError(
                f"optimizer: expected a torch.optim or fastcifar.optim optimizer, got {type(optimizer).__name__}"
            )
        if scheduler is not None and not (
            isinstance(scheduler, _optim.lr_scheduler._Schedule) or _is_torch_schedule(scheduler)
        ):
            raise TypeError(
                f"scheduler: expected a torch.optim.lr_scheduler or fastcifar.optim.lr_scheduler schedule, "
                f"got {type(scheduler).__name__}"
            )
        if _is_torch_schedule(scheduler) and scheduler.optimizer is not optimizer:
            raise ValueError("scheduler: was built on another optimizer than the one given to the Trainer")
        if scheduler_interval not in (None, "epoch", "step"):
            raise ValueError(f"scheduler_interval: {scheduler_interval!r} is not None, 'epoch' or 'step'")
        self.optimizer, self.scheduler = optimizer, scheduler
        self.name = engine_name(optimizer)
        self.rust_schedule = scheduler if isinstance(scheduler, _optim.lr_scheduler._Schedule) else None
        self.torch_schedule = scheduler if _is_torch_schedule(scheduler) else None
        if self.torch_schedule is not None and scheduler_interval is None:
            scheduler_interval = "step" if isinstance(scheduler, _PER_STEP) else "epoch"
        if isinstance(self.torch_schedule, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler_interval == "step":
            raise ValueError("scheduler_interval: ReduceLROnPlateau steps on a metric, once per epoch")
        self.per_step_schedule = self.torch_schedule is not None and scheduler_interval == "step"
        if (
            self.rust_schedule is not None
            and not isinstance(optimizer, _optim.Optimizer)
            and len(optimizer.param_groups) != 1
        ):
            raise ValueError(
                "scheduler: fastcifar's schedules drive one parameter group of a torch optimizer (or fastcifar.optim's "
                "groups); with several, use torch.optim.lr_scheduler"
            )
        if isinstance(optimizer, _optim.Optimizer):
            if optimizer.params is None:
                optimizer.params = [p for p in model.parameters() if p.requires_grad]
                optimizer.param_groups[0]["params"] = optimizer.params
            self.params: list[torch.Tensor] = list(optimizer.params)
        else:
            self.params = [p for g in optimizer.param_groups for p in g["params"]]
        own = {id(p) for p in model.parameters()}
        strangers = sum(id(p) not in own for p in self.params)
        if strangers:
            raise ValueError(
                f"optimizer: holds {strangers} tensor(s) that are not parameters of the model; build it on "
                f"model.parameters() (or a part of them)"
            )
        self._synced: tuple | None = None

    @property
    def on_engine(self) -> bool:
        return self.name is not None

    def native_config(self) -> _rs.OptimizerConfig:
        """The optimizer's settings for NativeTrainer; outside the engine, a plain container for the rate."""
        if isinstance(self.optimizer, _optim.Optimizer):
            return self.optimizer._written(written=False)
        if self.name is not None:  # on_engine
            return engine_config(self.name, self.optimizer.param_groups[0])
        return _rs.OptimizerConfig("SGD", lr=float(hyper_value(self.optimizer.param_groups[0]["lr"])))

    def engine_groups(self):
        """fastcifar.optim's parameter groups for NativeTrainer.set_param_groups (per parameter: the
        rate multiple and weight decay); None without groups."""
        return self.optimizer._engine_groups() if isinstance(self.optimizer, _optim.Optimizer) else None

    # --- keeping param_groups and the engine in step --------------------------------------------
    def _watch(self) -> tuple | None:
        if self.name is None:
            return None
        return tuple(_watched(self.name, g) for g in self.optimizer.param_groups)

    def mark_synced(self) -> None:
        self._synced = self._watch()

    def show(self, lr: float, momentum: float) -> None:
        """Writes the engine's current rate (and cycled momentum) into ``param_groups``."""
        if not self.on_engine:
            return
        if isinstance(self.optimizer, _optim.Optimizer):
            self.optimizer._set_rate(lr)
        else:
            self.optimizer.param_groups[0]["lr"] = lr
        if self.rust_schedule is not None and self.rust_schedule.settings().get("cycle_momentum"):
            for g in self.optimizer.param_groups:
                if "betas" in g:
                    g["betas"] = (momentum, g["betas"][1])
                elif "momentum" in g:
                    g["momentum"] = momentum
        self.mark_synced()

    def poll(self):
        """Every step: settings written into ``param_groups`` since the last look, for the engine."""
        if not self.on_engine:
            return None
        s = self._watch()
        if s == self._synced:
            return None
        self._synced = s
        if isinstance(self.optimizer, _optim.Optimizer):
            return self.optimizer._written()
        return engine_config(self.name, self.optimizer.param_groups[0], written=True)

    def outer(self, active, grads, lr, momentum):
        """After each optimizer step: the outside optimizer's step (returns the rate it used), then a
        per-batch schedule (returns the settings it wrote, for the engine)."""
        used = None
        if grads is not None:
            if self.rust_schedule is not None:  # a fastcifar schedule drives the rate of a torch optimizer
                self.optimizer.param_groups[0]["lr"] = lr
            # zero_grad(set_to_none=True): a parameter frozen since the last step, or one no gradient
            # reached, has no .grad, so the optimizer skips it as it would in a plain loop.
            for p in self.params:
                p.grad = None
            for i, g in zip(active, grads):
                self.params[i].grad = g
            self.optimizer.step()
            used = float(hyper_value(self.optimizer.param_groups[0]["lr"]))
        if self.per_step_schedule:
            self._step_schedule()
        return used if grads is not None else self.poll()

    def epoch_end(self, metric: float) -> None:
        if self.torch_schedule is None or self.per_step_schedule:
            return
        self._step_schedule(metric)

    def _step_schedule(self, metric: float | None = None) -> None:
        if self.on_engine:
            # torch's schedules count optimizer.step() calls to warn about a wrong order; on the
            # engine the update ran in Rust just before, so the order is right.
            # A private flag of torch's, which neither optimizer class declares.
            self.optimizer._opt_called = True  # type: ignore[union-attr]
        # Called for a torch schedule only: each epoch (epoch_end), or per step (outer, per_step_schedule).
        assert self.torch_schedule is not None
        if isinstance(self.torch_schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # Never per step (__init__ refuses it), so it comes through epoch_end, with the epoch's metric.
            assert metric is not None
            self.torch_schedule.step(metric)
        else:
            self.torch_schedule.step()

    # --- torch optimizers on the engine: their state lives in optimizer.state ---------------------
    def import_state(self, native) -> None:
        """Hands the torch optimizer's state (if it has any) to the engine, shared."""
        if isinstance(self.optimizer, _optim.Optimizer) or not self.on_engine or not self.optimizer.state:
            return
        states = [self.optimizer.state.get(p) or None for p in self.params]
        g = self.optimizer.param_groups[0]
        native.load_optimizer_state(lr=float(hyper_value(g["lr"])), momentum=momentum_of(g), states=states)

    def export_state(self, native) -> None:
        """Writes the engine's state into the torch optimizer's ``state`` (the same tensors)."""
        if isinstance(self.optimizer, _optim.Optimizer) or not self.on_engine:
            return
        for p, s in zip(self.params, native.optimizer_state().params):
            if s is None:
                continue
            step = s.pop("step")
            entry = self.optimizer.state[p]
            if self.name != "SGD":  # torch's SGD keeps no step count
                entry["step"] = torch.tensor(float(step))
            entry.update(s)  # the buffers, by torch's names: the engine's own tensors
