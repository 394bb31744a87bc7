"""``Trainer.lr_find``: the learning-rate range test of fastai and Lightning, on the Rust loop.

The rate rises from ``start_lr`` to ``end_lr`` over ``num_training`` optimizer steps (one
``PiecewiseLinear`` point per step, so the engine sets every step's rate itself and no Python
runs between the steps but the loss read-out), and the smoothed loss of each step is recorded.
The test trains a separate engine over the module's own tensors, from fresh optimizer state (as
a first fit starts), and writes back afterwards, bit for bit, everything it changed: the weights
and buffers, the ``.grad`` fields, the module's mode and torch's random generators. The trainer's
optimizer, schedule, step count and history are never touched.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch

from .. import _native as _rs
from .. import optim as _optim
from .._args import whole
from ..data.loader import DataLoader
from ..optim.engine_settings import engine_config
from . import capture

__all__ = ["LRFinder"]


class LRFinder:
    """The result of ``Trainer.lr_find``: ``lrs`` (the rate of each step), ``losses`` (that step's
    batch loss), ``smoothed`` (their bias-corrected exponential moving average, ``beta``), whether
    the test ``diverged`` (stopped at ``early_stop_threshold`` times the best smoothed loss, or at
    a non-finite loss), ``suggestion()`` and ``plot()``. ``results`` is Lightning's
    ``{"lr": ..., "loss": ...}`` (the smoothed loss, as Lightning records it)."""

    def __init__(self, lrs: list, losses: list, smoothed: list, mode: str, diverged: bool):
        self.lrs, self.losses, self.smoothed = list(lrs), list(losses), list(smoothed)
        self.mode, self.diverged = mode, diverged

    @property
    def results(self) -> dict:
        return {"lr": list(self.lrs), "loss": list(self.smoothed)}

    def _index(self, skip_begin: int, skip_end: int) -> int | None:
        n = len(self.smoothed)
        idx = [i for i in range(skip_begin, n - skip_end) if math.isfinite(self.smoothed[i])]
        if len(idx) < 2:
            return None
        # Steepest descent per step, as Lightning takes it: per log-rate step for the exponential
        # sweep (its steps are even in log lr), per rate step for the linear one.
        g = np.gradient(np.asarray([self.smoothed[i] for i in idx]))
        return idx[int(np.argmin(g))]

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The rate where the smoothed loss falls fastest, leaving out the first ``skip_begin``
        and last ``skip_end`` steps (Lightning's defaults); None, with a warning, when fewer
        than two steps remain (raise ``num_training`` or give more batches)."""
        for name, v in (("skip_begin", skip_begin), ("skip_end", skip_end)):
            whole(name, v, 0, owner="suggestion")
        i = self._index(skip_begin, skip_end)
        if i is None:
            warnings.warn(
                f"lr_find: {len(self.smoothed)} recorded steps leave fewer than 2 after skip_begin={skip_begin}, "
                f"skip_end={skip_end}: no suggestion (raise num_training, lower end_lr or skip_begin)",
                stacklevel=2,
            )
            return None
        return float(self.lrs[i])

    def plot(self, suggest: bool = True, show: bool = False, ax=None):
        """The smoothed loss (and, faint, each step's) against the rate, log-scaled for the
        exponential sweep; ``suggest`` marks ``suggestion()``. Returns the matplotlib Figure."""
        from .. import plot as _plot

        plt = _plot._plt()
        fig, ax = plt.subplots(figsize=(6, 4)) if ax is None else (ax.figure, ax)
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="batch loss")
        ax.plot(self.lrs, self.smoothed, color="C0", label="smoothed loss")
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        if suggest:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                i = self._index(10, 1)
            if i is not None:
                ax.plot([self.lrs[i]], [self.smoothed[i]], "o", color="C3", label=f"suggestion {self.lrs[i]:.2g}")
        ax.legend()
        if show:
            plt.show()
            return fig
        return _plot._shown_once(fig)

    def __repr__(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = self.suggestion()
        shown = "None" if s is None else f"{s:.3g}"
        return (
            f"LRFinder({len(self.lrs)} steps, lr {self.lrs[0]:.3g}..{self.lrs[-1]:.3g}, suggestion={shown})"
            if (self.lrs)
            else "LRFinder(0 steps)"
        )


def _positive(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
        raise ValueError(f"lr_find({name}={v!r}): expected a finite number > 0")
    return float(v)


def schedule(start_lr: float, end_lr: float, num_training: int, mode: str) -> list[float]:
    """The rate of each step: even in log lr (exponential) or in lr (linear), both ends included."""
    n = num_training - 1
    if mode == "exponential":
        return [start_lr * (end_lr / start_lr) ** (i / n) for i in range(num_training)]
    return [start_lr + (end_lr - start_lr) * i / n for i in range(num_training)]


def check(start_lr, end_lr, num_training, mode, early_stop_threshold, beta) -> tuple:
    start_lr, end_lr = _positive("start_lr", start_lr), _positive("end_lr", end_lr)
    if end_lr <= start_lr:
        raise ValueError(f"lr_find(start_lr={start_lr:g}, end_lr={end_lr:g}): end_lr must be above start_lr")
    whole("num_training", num_training, 2, owner="lr_find", unit="optimizer steps")
    if mode not in ("exponential", "linear"):
        raise ValueError(f"lr_find(mode={mode!r}): expected 'exponential' or 'linear'")
    if early_stop_threshold is not None:
        early_stop_threshold = _positive("early_stop_threshold", early_stop_threshold)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ValueError(f"lr_find(beta={beta!r}): expected a number in [0, 1) (the loss smoothing)")
    return start_lr, end_lr, early_stop_threshold, float(beta)


def _fresh_copy(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """An optimizer that runs its own step(): a copy over the same parameters, without state."""
    memo: dict = {id(p): p for g in optimizer.param_groups for p in g["params"]}
    clone = copy.deepcopy(optimizer, memo)
    clone.state.clear()
    return clone


def run(trainer, loader, start_lr, end_lr, num_training, mode, early_stop_threshold, beta, progress) -> LRFinder:
    """The range test on ``trainer``'s module."""
    from .trainer import _bar, _check_loader, _cudnn_benchmark, _input_shape, _native_loader

    _check_loader("train_loader", loader)
    start_lr, end_lr, early_stop_threshold, beta = check(
        start_lr, end_lr, num_training, mode, early_stop_threshold, beta
    )

    tr = trainer
    if tr.process_group is not None:
        raise ValueError(
            "lr_find: runs in one process; run it before launching data-parallel training (without torchrun) and "
            "pass the rate it suggests to every rank"
        )
    if isinstance(loader, DataLoader) and loader.dtype != torch.float32:
        raise ValueError("train_loader: yields uint8 batches; the trainer needs float32 (dtype=torch.float32)")
    if len(loader) == 0:
        raise ValueError("train_loader: yields no batch per epoch: lower batch_size or set drop_last=False")
    lrs = schedule(start_lr, end_lr, num_training, mode)
    native = tr._native_model(_input_shape(loader))
    bridge, model = tr._bridge, tr.model
    c = tr.config
    if bridge.on_engine:
        opt = tr.optimizer
        shared = opt._shared() if isinstance(opt, _optim.Optimizer) else opt.param_groups[0]
        cfg = engine_config(bridge.name, {**shared, "lr": end_lr})
        outside = None
    else:
        cfg = _rs.OptimizerConfig("SGD", lr=end_lr)  # a container for the rate (the optimizer steps itself)
        outside = _fresh_copy(tr.optimizer)
    engine = _rs.NativeTrainer(
        native,
        params=bridge.params,
        optimizer=cfg,
        schedule=_rs.ScheduleConfig(
            "PiecewiseLinear", milestones=list(range(num_training)), factors=[lr / end_lr for lr in lrs]
        ),
        config=_rs.TrainConfig(
            label_smoothing=c["label_smoothing"],
            precision=tr.precision,
            grad_accum_steps=c["grad_accum_steps"],
            grad_clip=c["grad_clip"],
            # One read-out per optimizer step: the loss of the step's last batch.
            log_every=c["grad_accum_steps"],
        ),
    )
    groups = bridge.engine_groups()
    if groups is not None:
        engine.set_param_groups(*groups)
    engine.set_max_steps(num_training)

    _, tensors = capture.module_tensors(model)
    saved = [t.detach().clone() for t in tensors]
    params = list(model.parameters())
    grads = [p.grad for p in params]
    training = model.training
    cuda = tr.device.startswith("cuda")
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if cuda else None
    loader_epoch = getattr(loader, "epoch", None) if isinstance(loader, DataLoader) else None

    bar = _bar(num_training, "lr_find", progress and tr.is_main)
    run_lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    state = {"avg": 0.0, "best": math.inf, "diverged": False}

    def on_step(info):
        loss = float(info["batch_loss"])
        k = len(losses)
        state["avg"] = beta * state["avg"] + (1 - beta) * loss
        s = state["avg"] / (1 - beta ** (k + 1))
        run_lrs.append(float(info["lr"]))
        losses.append(loss)
        smoothed.append(s)
        if bar is not None:
            bar.n = k + 1
            bar.set_postfix(lr=f"{info['lr']:.2e}", loss=f"{s:.4f}", refresh=False)
            bar.refresh()
        if not math.isfinite(s) or (
            early_stop_threshold is not None and k > 0 and s > early_stop_threshold * state["best"]
        ):
            state["diverged"] = True
            return False
        state["best"] = min(state["best"], s)
        return True

    def outer(active, g, lr, momentum):
        # An optimizer of its own (not on the engine): its copy takes this step's rate in every group.
        for p in bridge.params:
            p.grad = None
        for i, t in zip(active, g):
            bridge.params[i].grad = t
        assert outside is not None
        for group in outside.param_groups:
            group["lr"] = lr
        outside.step()
        return lr

    hooks = _rs.TrainHooks(
        progress=on_step, outer=outer if outside is not None else None, owns_optimizer=outside is not None
    )
    try:
        model.train()
        fast = _native_loader(loader)
        epoch = 0
        with _cudnn_benchmark(cuda):
            while engine.global_step < num_training and not state["diverged"]:
                try:
                    if fast is not None:
                        stats = engine.train_epoch(native, fast, epoch=epoch, hooks=hooks)
                    else:
                        if isinstance(loader, DataLoader):
                            loader.set_epoch(epoch)
                        stats = engine.train_batches(native, iter(loader), steps=len(loader), epoch=epoch, hooks=hooks)
                except FloatingPointError:
                    # The loss overflowed (the engine stops a fit there): the sweep has diverged.
                    state["diverged"] = True
                    break
                if stats.interrupted or stats.stopped:
                    break
                epoch += 1
    finally:
        if bar is not None:
            bar.close()
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)
        for p, g in zip(params, grads):
            p.grad = g
        model.train(training)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if loader_epoch is not None:
            loader.set_epoch(loader_epoch)
    return LRFinder(run_lrs, losses, smoothed, mode, bool(state["diverged"]))
