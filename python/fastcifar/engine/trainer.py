"""``Trainer``: fit / evaluate / predict / save, with the per-step loop in Rust.

trainer = fastcifar.Trainer(model, optimizer=fastcifar.optim.Adam(lr=1e-3, weight_decay=1e-4),
                            scheduler=fastcifar.optim.lr_scheduler.ReduceLROnPlateau(mode="min", patience=3))
history = trainer.fit(trainloader, testloader, epochs=50, checkpoint="best_model.pth")
report = trainer.evaluate(testloader)     # loss, accuracy, per-class accuracy, confusion matrix
trainer.save("checkpoint.pth")            # torch.load() reads it: the seed's checkpoint shape
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from .. import _native as _rs
from .. import callbacks as _callbacks
from .. import distributed as _dist
from .. import optim as _optim
from .. import transforms as T
from .._defaults import TRAINER
from .._files import atomic_write, check_writable
from .._warn import warn_once
from ..data.loader import DataLoader, fast_path
from ..models import Module
from . import capture
from . import lr_find as _lr_find
from .bridge import Bridge
from .checkpoint import (
    CHECKPOINT_VERSION,
    check_same_optimizer,
    checkpoint_paths,
    describe,
    import_model,
    model_class,
    read_checkpoint,
    rebuild_optimizer,
    rebuild_schedule,
    to_cpu,
)
from .history import EvalReport, History
from .seam import Engine

__all__ = ["Trainer", "History", "EvalReport", "ScheduleHorizonError"]


def _interactive() -> bool:
    """Whether a progress bar has somewhere to redraw itself: a terminal, or a notebook kernel
    (tqdm's widget). In a log file or a pipe each redraw would be a line of its own."""
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # replaced or closed stderr
        pass
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def _bar(total, desc, enabled):
    """A tqdm bar when ``enabled`` is True, none when False; None (the default) means a bar only
    where it can redraw itself (a terminal or a notebook), so logs get one plain line per epoch."""
    if enabled is None:
        enabled = _interactive()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True)


class Trainer:
    """Trains any ``torch.nn.Module`` (your own class, or a ``fastcifar.models`` built-in) with an
    optimizer and schedule from ``fastcifar.optim``.

    The module is captured with ``torch.fx`` and its forward runs in Rust over its own parameters
    and buffers (shared, not copied): after ``fit`` the module holds the trained weights and its
    ``state_dict()`` is its own. A module that fx cannot capture runs its own forward in eager
    PyTorch instead (a one-time warning names the cause); everything else stays the same.

    ``device="auto"`` picks CUDA when present. ``amp=True`` trains in mixed precision: bf16
    autocast on a CPU with native bf16 (AMX or AVX512-BF16; elsewhere it warns and trains in
    float32) and on GPUs that have it, fp16 with dynamic loss scaling on older GPUs.
    ``amp="bf16"`` / ``amp="fp16"`` (or the torch dtypes) ask for one dtype, honoured or refused by
    name. Master weights, optimizer state, the loss and BatchNorm statistics stay float32; evaluate,
    predict and TTA run in the same precision (``trainer.precision``).
    ``seed`` seeds torch's generator (weight init of models built afterwards, dropout).

    Data-parallel: under torchrun (or with ``distributed=True``) the trainer joins
    torch.distributed's process group (``fastcifar.distributed``), takes rank 0's initial weights,
    averages gradients across ranks every optimizer step (``bucket_cap_mb`` per all-reduce), and
    shards its loaders (``batch_size`` is per rank). BatchNorm statistics stay local unless
    ``sync_bn=True``; without it, rank 0's running statistics are broadcast after every epoch, so
    all ranks hold the same model. ``evaluate`` reports over all ranks' shards. Only rank 0 shows
    progress and writes checkpoints (``save`` does nothing elsewhere).

    ``lookahead`` (a ``fastcifar.optim.Lookahead``) keeps airbench's moving average of the weights
    inside the Rust loop. On CUDA, cuDNN's benchmark mode is on while ``fit`` runs (the shapes are
    fixed), and restored after.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer=None,
        scheduler=None,
        loss: str = "cross_entropy",
        label_smoothing: float = TRAINER["label_smoothing"],
        device="auto",
        amp: bool | str | torch.dtype = False,
        channels_last: bool | None = None,
        grad_accum_steps: int = TRAINER["grad_accum_steps"],
        grad_clip: float | None = TRAINER["grad_clip"],
        seed: int | None = None,
        log_every: int = TRAINER["log_every"],
        distributed: bool | None = None,
        sync_bn: bool = False,
        bucket_cap_mb: float = 25.0,
        scheduler_interval: str | None = None,
        lookahead: _optim.Lookahead | dict | None = None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"model: expected a torch.nn.Module (your own or fastcifar.models), got {type(model).__name__}"
            )
        if loss != "cross_entropy":
            raise ValueError(f"loss: '{loss}' is not supported (only 'cross_entropy')")
        optimizer = optimizer if optimizer is not None else _optim.Adam()
        amp = _amp_request(amp)
        if distributed is None:
            distributed = _dist.launched() or _dist.active()
        if sync_bn and not distributed:
            raise ValueError("sync_bn: needs data-parallel training (launch with torchrun, or pass distributed=True)")
        self.process_group: _dist.ProcessGroup | None = None
        if distributed:
            self.process_group, device = _dist.init(device)
        self.rank = self.process_group.rank if self.process_group else 0
        self.world_size = self.process_group.world_size if self.process_group else 1
        self.sync_bn = bool(sync_bn)
        if seed is not None:
            torch.manual_seed(seed + self.rank)  # different dropout masks per rank; weights come from rank 0
        # The core's one device parser: 'cpu', 'cuda', 'cuda:N', 'auto', an int, a torch.device, None.
        self.device = _rs.resolve_device(device)
        cuda_bf16 = self.device.startswith("cuda") and torch.cuda.is_bf16_supported()
        #: The precision every forward runs in: "float32", "bf16" or "fp16" (what ``amp`` gives on this device).
        self.precision, note = _rs.resolve_amp(amp, self.device, cuda_bf16=cuda_bf16)
        if note:
            warnings.warn(note, stacklevel=2)
        if channels_last is not None and not isinstance(channels_last, bool):
            raise TypeError(f"channels_last: expected True, False or None (automatic), got {channels_last!r}")
        #: Whether the graph runs on channels_last activations (batches written so by the loader).
        self.channels_last = (
            _auto_channels_last(self.device, self.precision) if channels_last is None else channels_last
        )
        # The core checks the loop's settings (grad_accum_steps, log_every, label_smoothing, grad_clip).
        train_config = _rs.TrainConfig(
            label_smoothing=float(label_smoothing),
            precision=self.precision,
            grad_accum_steps=grad_accum_steps,
            grad_clip=None if grad_clip is None else float(grad_clip),
            log_every=log_every,
        )
        self.model = model.to(self.device)
        self._compiled = capture.compile_module(self.model)
        self._fingerprint = capture.fingerprint(self.model)
        if sync_bn and not self._compiled.is_graph:
            raise ValueError(
                f"sync_bn: needs the model on the Rust graph, but {type(model).__name__} runs in eager PyTorch "
                "(see the warning above); convert its BatchNorm layers with "
                "torch.nn.SyncBatchNorm.convert_sync_batchnorm instead"
            )
        self._bridge = Bridge(optimizer, scheduler, self.model, scheduler_interval)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.config: dict[str, Any] = {
            "label_smoothing": float(label_smoothing),
            "amp": amp,
            "channels_last": channels_last,
            "grad_accum_steps": grad_accum_steps,
            "grad_clip": None if grad_clip is None else float(grad_clip),
            "log_every": log_every,
            "scheduler_interval": scheduler_interval,
        }
        rs = self._bridge.rust_schedule
        self._native = _rs.NativeTrainer(
            self._compiled,
            params=self._bridge.params,
            optimizer=self._bridge.native_config(),
            schedule=rs._config if rs is not None else None,
            config=train_config,
        )
        #: What fastcifar.optim's optimizer and schedules ask of the loop (their rate, state, parameters).
        self.engine = Engine(self._native, self.model)
        if isinstance(optimizer, _optim.Optimizer):
            optimizer.attach(self.engine)
        groups = self._bridge.engine_groups()
        if groups is not None:
            self._native.set_param_groups(*groups)
        self._set_lookahead(lookahead)
        self._bridge.mark_synced()
        # param_groups show the rate the first step will use (a fastcifar schedule's, as torch's set it).
        self._bridge.show(self._native.lr, self._native.momentum)
        if self.process_group is not None:
            self.process_group.broadcast(list(model.parameters()) + list(model.buffers()))
            self._native.set_process_group(self.process_group, float(bucket_cap_mb))
        self._shards: dict[tuple, tuple] = {}
        self.history = History()
        self.epoch = 0
        self.best_accuracy: float | None = None
        self.eval_transform: T.Transform | None = None
        #: Class names of the training data (set by fit, kept in checkpoints); ``predict(names=True)`` uses them.
        self.classes: list[str] | None = None
        #: (C, H, W) of the training batches; predict converts and resizes images to it.
        self.input_shape: tuple | None = None
        # The last fit's ``progress``: evaluate's default follows it.
        self._progress: bool | None = None

    def _set_lookahead(self, lookahead) -> None:
        """Binds a ``fastcifar.optim.Lookahead`` (or its settings, from a checkpoint) to the module's
        floating-point state: its parameters and floating-point buffers, as they are now."""
        if isinstance(lookahead, dict):
            lookahead = _optim.Lookahead(**lookahead)
        if lookahead is not None and not isinstance(lookahead, _optim.Lookahead):
            raise TypeError(f"lookahead: expected a fastcifar.optim.Lookahead, got {type(lookahead).__name__}")
        self.lookahead = lookahead
        self.config["lookahead"] = None if lookahead is None else lookahead.settings()
        tensors = _float_state(self.model) if lookahead is not None else []
        self._native.set_lookahead(None if lookahead is None else lookahead._config, tensors)
        self._lookahead_ids = [id(t) for t in tensors]

    # --- training --------------------------------------------------------------------------
    def fit(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader | None = None,
        epochs: int = 1,
        checkpoint=None,
        callbacks: Sequence[Callable[[dict], bool | None]] = (),
        progress: bool | None = None,
        max_steps: int | None = None,
        restore_best: bool = False,
    ) -> History:
        """Trains ``epochs`` more epochs; returns the history.

        Epoch e draws its shuffle and augmentations from ``train_loader``'s seed and e, so a fit
        resumed from a checkpoint continues exactly.

        ``checkpoint="best_model.pth"`` writes two files (atomically): ``best_model.pth``, the best
        epoch's ``model.state_dict()`` (what the tutorial's ``torch.save(model.state_dict(),
        'best_model.pth')`` writes, read back by ``model.load_state_dict(torch.load(path))``),
        rewritten whenever validation accuracy improves (every epoch without ``val_loader``); and
        ``best_model.ckpt.pth``, the full checkpoint of the last finished epoch (model, optimizer,
        schedule, history: ``Trainer.load`` resumes from it), rewritten after every epoch.

        After ``fit`` the module holds the **last** epoch's weights, as a torch loop leaves it;
        ``restore_best=True`` loads the best epoch's weights into it at the end (it needs
        ``val_loader``; the optimizer, schedule and ``trainer.epoch`` stay the last epoch's).

        ``callbacks`` get a dict every ``log_every`` steps and at each epoch end; one returning
        False stops training. Ctrl-C stops at the next step boundary and returns the history so
        far, with the model usable. ``max_steps`` ends training once the trainer has taken that
        many optimizer steps in all (mid-epoch: that epoch ends there and is recorded as usual),
        e.g. airbench's 9.9 epochs. ``progress``: None (the default) shows a bar in a terminal or
        notebook and one plain line per epoch elsewhere (logs); True always a bar; False nothing.
        ``evaluate``'s default then follows it.
        """
        self._check_fit_arguments(train_loader, val_loader, epochs, max_steps, restore_best, progress)
        # fastcifar.callbacks' objects check their monitor against what this fit records, now.
        _callbacks.fit_start(callbacks, self, validating=val_loader is not None)
        native = self._prepare_fit(train_loader, val_loader, progress, max_steps)
        source, train_loader = train_loader, self._shard(train_loader, pad=True)
        best_file, full_file = self._check_before_training(train_loader, val_loader, epochs, max_steps, checkpoint)
        shown = progress if self.is_main else False  # rank 0 alone shows progress
        best_state: dict | None = None
        final = self.epoch + epochs
        for _ in range(epochs):
            if max_steps is not None and self._native.global_step >= max_steps:
                break
            e = self.epoch
            stats, stop_requested = self._train_epoch(
                native, train_loader, e, f"Epoch {e + 1}/{final}", shown, callbacks
            )
            record = _epoch_record(e, stats)
            if stats.interrupted or stats.stopped:
                self._keep_unfinished_epoch(record, interrupted=stats.interrupted)
                break
            source.epoch = train_loader.epoch = e + 1
            self._finish_epoch(record, val_loader)
            if shown is not False:  # the epoch's plain line, unless progress=False
                _print_epoch(record, final)
            improved = self._note_best(record)
            if improved and restore_best:
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if best_file is not None and full_file is not None:
                self._write_checkpoints(best_file, full_file, best=improved or val_loader is None)
            # Every callback sees the epoch, also after one asks to stop (a checkpoint of the last epoch).
            stops = [cb(dict(record, phase="epoch")) is False for cb in callbacks]
            if any(stops) or stop_requested:
                break
        if restore_best:
            self._restore_best(best_state, best_file)
        return self.history

    def _check_fit_arguments(self, train_loader, val_loader, epochs, max_steps, restore_best, progress) -> None:
        """``fit``'s arguments, checked before anything is touched."""
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0):
            raise ValueError(f"max_steps: must be a non-negative int or None, got {max_steps!r}")
        _check_loader("train_loader", train_loader)
        if val_loader is not None:
            _check_loader("val_loader", val_loader)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs: must be a non-negative int, got {epochs!r}")
        if not isinstance(restore_best, bool):
            raise TypeError(f"restore_best: expected True or False, got {restore_best!r}")
        if restore_best and val_loader is None:
            raise ValueError(
                "restore_best: the best epoch is the one with the best validation accuracy; pass val_loader "
                "(without it the module keeps the last epoch's weights: leave restore_best=False)"
            )
        if progress is not None and not isinstance(progress, bool):
            raise TypeError(f"progress: expected True, False or None (a bar where it can redraw), got {progress!r}")

    def _prepare_fit(self, train_loader, val_loader, progress, max_steps):
        """What a fit learns from its data (eval transform, classes, input shape), the compiled
        module brought up to date (returned), the lookahead, step limit and modes set for training."""
        if isinstance(train_loader, DataLoader) and train_loader.dtype != torch.float32:
            raise ValueError("train_loader: yields uint8 batches; the trainer needs float32 (dtype=torch.float32)")
        if self.eval_transform is None:
            src = val_loader if val_loader is not None else train_loader
            if isinstance(src, DataLoader):
                self.eval_transform = T.deterministic_part(src.transform)
        self._learn_data(train_loader)
        self._progress = progress
        native = self._native_model(_input_shape(train_loader))
        if self.lookahead is not None and [id(t) for t in _float_state(self.model)] != self._lookahead_ids:
            # The module's tensors were replaced (.to(), a new layer): average those. Its average
            # was of the old ones, so it starts again.
            self._set_lookahead(self.lookahead)
        self._native.set_max_steps(max_steps)
        self.model.train()
        self._bridge.import_state(self._native)
        return native

    def _check_before_training(
        self, train_loader, val_loader, epochs: int, max_steps: int | None, checkpoint
    ) -> tuple[str | None, str | None]:
        """What would fail later, found before the first step: a loader without a batch, a
        checkpoint folder that cannot be written, a OneCycleLR too short. Returns the checkpoint's
        two files (best weights, full checkpoint), or Nones."""
        for name, ld in (("train_loader", train_loader), ("val_loader", val_loader)):
            if epochs and ld is not None and len(ld) == 0:
                raise ValueError(
                    f"{name}: yields no batch per epoch ({len(ld.dataset)} images, batch_size={ld.batch_size}, "
                    f"drop_last={ld.drop_last}): lower batch_size or set drop_last=False"
                )
        best_file, full_file = checkpoint_paths(checkpoint) if checkpoint is not None else (None, None)
        if epochs and best_file is not None and self.is_main:
            # A full disk, a read-only or missing folder is found now, not after the first epoch.
            need = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            check_writable(best_file, need_bytes=2 * need)
        if epochs:
            self._check_horizon(len(train_loader), epochs, max_steps)
        return best_file, full_file

    def _train_epoch(self, native, train_loader, e: int, desc: str, progress, callbacks):
        """Epoch ``e``'s pass over ``train_loader`` on the Rust loop (the progress bar and step
        callbacks in its hooks); the optimizer's state is brought back to Python on every exit.
        Returns the epoch's statistics and whether a step callback asked to stop."""
        bridge = self._bridge
        bar = _bar(len(train_loader), desc, progress)
        on_step = _OnStep(bridge, bar, callbacks)
        if self.sync_bn:
            assert self.process_group is not None  # sync_bn needs distributed (__init__ checks it)
            self._compiled.set_sync_bn(_dist.sync_batch_norm(self.process_group))
        hooks = _rs.TrainHooks(
            progress=on_step,
            poll=bridge.poll if bridge.on_engine else None,
            outer=bridge.outer if (not bridge.on_engine or bridge.per_step_schedule) else None,
            owns_optimizer=not bridge.on_engine,
        )
        try:
            fast = _native_loader(train_loader)
            # cuDNN's benchmark mode for the pass (the shapes are fixed), the user's setting back after.
            with _cudnn_benchmark(self.device.startswith("cuda")):
                if fast is not None:
                    stats = self._native.train_epoch(native, fast, epoch=e, hooks=hooks)
                else:
                    if isinstance(train_loader, DataLoader):
                        train_loader.set_epoch(e)
                    stats = self._native.train_batches(
                        native, iter(train_loader), steps=len(train_loader), epoch=e, hooks=hooks
                    )
        finally:
            if self.sync_bn:
                self._compiled.set_sync_bn(None)
            if bar is not None:
                bar.close()
            bridge.export_state(self._native)
            bridge.show(self._native.lr, self._native.momentum)
        if self.process_group is not None and not self.sync_bn:
            self.process_group.broadcast(list(self.model.buffers()))
        return stats, on_step.stop_requested

    def _keep_unfinished_epoch(self, record: dict, interrupted: bool) -> None:
        """An epoch cut short (Ctrl-C, or a step callback's stop) is not a finished epoch:
        trainer.epoch and the history's epochs stay as they were, and a continued fit runs this
        epoch again from its start (its record then replaces this one)."""
        self.history.interrupted = record
        if interrupted and self.is_main:
            n = record["epoch"]
            print(
                f"Interrupted during epoch {n}: stopped at a step boundary; "
                "the model and history are usable "
                f"(trainer.epoch = {self.epoch}; fit again to run epoch {n} from its start)."
            )

    def _finish_epoch(self, record: dict, val_loader) -> None:
        """A finished epoch: validation (into ``record``), the schedule's epoch step on the
        validation loss (the training loss without validation), and the history."""
        if val_loader is not None:
            rep = self.evaluate(val_loader, progress=False)
            record["val_loss"], record["val_accuracy"] = rep.loss, rep.accuracy
        metric = record.get("val_loss", record["loss"])
        self._native.end_epoch(metric)
        self._bridge.show(self._native.lr, self._native.momentum)
        self._bridge.epoch_end(metric)
        self.epoch = record["epoch"]
        self.history.append(record)

    def _note_best(self, record: dict) -> bool:
        """Whether the epoch's validation accuracy beats the best so far (then it is the best)."""
        acc = record.get("val_accuracy")
        improved = acc is not None and (self.best_accuracy is None or acc > self.best_accuracy)
        if improved:
            self.best_accuracy = acc
        return improved

    def _write_checkpoints(self, best_file: str, full_file: str, best: bool) -> None:
        """``fit(checkpoint=...)``'s files: the best weights when ``best``, the full checkpoint always."""
        if best:
            self.save_weights(best_file)
        self.save(full_file)

    def lr_find(
        self,
        train_loader: DataLoader,
        *,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        beta: float = 0.98,
        progress: bool | None = None,
    ) -> _lr_find.LRFinder:
        """The learning-rate range test (fastai's ``lr_find``, Lightning's ``Tuner.lr_find``): trains
        ``num_training`` optimizer steps with the rate rising from ``start_lr`` to ``end_lr``
        (``mode``: "exponential" or "linear"), recording each step's loss and its moving average
        (``beta``), and stops early once that average exceeds ``early_stop_threshold`` times its
        best (None: never) or the loss overflows. Runs on the Rust loop, from fresh optimizer
        state; the module's weights, buffers, ``.grad``, mode and torch's random state are
        restored exactly afterwards, and the trainer's optimizer, schedule and history are not
        touched. Returns an ``LRFinder``: ``lrs``, ``losses``, ``smoothed``, ``suggestion()``
        (the steepest descent of the smoothed loss, as Lightning's) and ``plot()``."""
        return _lr_find.run(
            self, train_loader, start_lr, end_lr, num_training, mode, early_stop_threshold, beta, progress
        )

    def _restore_best(self, best_state: dict | None, best_file: str | None) -> None:
        """Loads the best epoch's weights into the module (``fit(restore_best=True)``): this fit's,
        or an earlier fit's from the best-weights file when this one did not improve on it."""
        if best_state is None and best_file is not None and os.path.exists(best_file):
            best_state = torch.load(best_file, map_location=self.device, weights_only=True)
        if best_state is None:
            warnings.warn(
                "fit(restore_best=True): no epoch of this fit beat the best validation accuracy of an earlier "
                f"fit ({self.best_accuracy}), whose weights were not kept (pass the same checkpoint= to keep "
                "them on disk); the module keeps the last epoch's weights",
                stacklevel=3,
            )
            return
        with torch.no_grad():
            self.model.load_state_dict(best_state)

    def _check_horizon(self, batches_per_epoch: int, epochs: int, max_steps: int | None) -> None:
        """Refuses, before training, a fit that would step a OneCycleLR past the steps it was
        built for (torch's and the core's raise mid-epoch, when it is too late to choose)."""
        accum = int(self.config["grad_accum_steps"])
        steps = epochs * -(-batches_per_epoch // accum)
        if max_steps is not None:
            steps = min(steps, max(0, max_steps - self._native.global_step))
        if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            total, taken = int(self.scheduler.total_steps), int(self.scheduler.last_epoch)
            if not self._bridge.per_step_schedule:  # scheduler_interval="epoch": one step per epoch
                steps = epochs
        elif isinstance(self.scheduler, _optim.lr_scheduler.OneCycleLR) or (
            getattr(self.scheduler, "name", None) == "OneCycleLR"
        ):
            total = int(self.scheduler.settings()["total_steps"])
            taken = int((self._native.scheduler_state() or {}).get("step", 0))
        else:
            return
        if taken + steps > total:
            left = total - taken
            raise ScheduleHorizonError(
                f"OneCycleLR was built for {total} steps and has taken {taken}; fit(epochs={epochs}) would take "
                f"{steps} more ({-(-batches_per_epoch // accum)} per epoch), {taken + steps} in all. Build a new "
                "schedule for the extra epochs (OneCycleLR(..., total_steps=...) given to a new Trainer, or "
                "Trainer.load(path, scheduler=...)), or stop where this one ends: "
                f"fit(..., max_steps={self._native.global_step + max(left, 0)})"
            )

    # --- evaluation and prediction ---------------------------------------------------------
    def evaluate(self, loader: DataLoader, progress: bool | None = None, tta: int = 0) -> EvalReport:
        """Loss (mean over images), accuracy, per-class accuracy and the confusion matrix.
        ``tta`` (test-time augmentation, as airbench's): 0 none, 1 (or True) the mean of the logits
        of each image and its mirror, 2 also those of one-pixel translations (reflect-padded).
        ``progress`` defaults to the last ``fit``'s (a bar only in a terminal or notebook unless
        that fit said True or False)."""
        tta = _tta_level(tta)
        _check_loader("loader", loader)
        loader = self._shard(loader, pad=False)
        if progress is None:
            progress = self._progress
        bar = _bar(len(loader), "Evaluate", progress if self.is_main else False)

        def cb(i, n):
            if bar is not None:
                bar.n = i
                bar.refresh()

        try:
            with self._in_eval(_input_shape(loader)) as native:
                fast = _native_loader(loader)
                if fast is not None:
                    r = _rs.evaluate(native, fast, callback=cb, tta=tta)
                else:
                    classes = getattr(loader.dataset, "classes", None) or self.classes or []
                    r = _rs.evaluate_batches(
                        native, iter(loader), steps=len(loader), num_classes=len(classes), callback=cb, tta=tta
                    )
        finally:
            if bar is not None:
                bar.close()
        loss, acc, count, conf, nc = r.loss, r.accuracy, r.count, r.confusion, r.num_classes
        if self.process_group is not None:
            # Every rank reports over the whole data set: sum the counts of all shards.
            tot = self.process_group.sum([loss * count, float(count)] + [float(v) for v in conf])
            count = int(tot[1])
            loss = tot[0] / max(count, 1)
            conf = [int(round(v)) for v in tot[2:]]
            acc = sum(conf[i * nc + i] for i in range(nc)) / max(count, 1)
        cm = np.asarray(conf, dtype=np.int64).reshape(nc, nc)
        names = list(getattr(loader.dataset, "classes", None) or self.classes or [])
        classes = names if len(names) == nc else [str(i) for i in range(nc)]
        totals = cm.sum(1)
        per_class = {c: float(cm[i, i] / totals[i]) if totals[i] else float("nan") for i, c in enumerate(classes)}
        return EvalReport(loss, acc, count, classes, cm, per_class)

    # --- the module on the engine -------------------------------------------------------------
    def _native_model(self, shape: tuple | None = None):
        """The compiled module, brought up to date: the same graph over the module's current
        tensors (after ``.to()``, which replaces buffers), or a fresh capture when the module's
        structure or settings changed since the last one. ``shape`` (C, H, W) is the input about
        to be used, for the check that the graph still answers as the module does."""
        p = next(iter(self.model.parameters()), None)
        if (
            p is not None
            and str(p.device) != self.device
            and not (self.device == "cuda" and p.device.type == "cuda" and p.device.index == 0)
        ):
            raise ValueError(
                f"model: its parameters are on {p.device}, but this trainer trains on {self.device}; "
                "move the model back "
                f"with model.to('{self.device}') (or build a Trainer with device='{p.device}')"
            )
        fp = capture.fingerprint(self.model)
        fresh = fp != self._fingerprint
        if fresh:
            self._compiled = capture.compile_module(self.model)
            self._fingerprint = fp
        else:
            self._compiled.rebind(*capture.module_tensors(self.model))
        shape = shape or self.input_shape or _builtin_shape(self.model)
        # The check compares with the module's own forward: float32, (N, C, H, W).
        self._compiled.precision, self._compiled.channels_last = "float32", False
        if not capture.verify(self.model, self._compiled, shape):
            # Something the forward reads changed in a way the fingerprint cannot see: capture
            # again, and if the graph still disagrees, run the module's own forward.
            if not fresh:
                self._compiled = capture.compile_module(self.model)
            if not capture.verify(self.model, self._compiled, shape):
                self._compiled = capture.compile_module(
                    self.model,
                    eager_because="its captured graph does not give what its own forward gives on a sample "
                    "(its forward reads state that the trace cannot follow, or draws random numbers in eval mode)",
                )
        self._compiled.precision, self._compiled.channels_last = self.precision, self.channels_last
        _note_caller_autocast(self.device, self.precision)
        return self._compiled

    @contextlib.contextmanager
    def _in_eval(self, shape: tuple | None = None):
        """The compiled module, with the module's own mode flags in eval for the call (the
        engine runs the eval graph; the flags say so too) and restored after it."""
        was = self.model.training
        try:
            native = self._native_model(shape)
            self.model.eval()
            yield native
        finally:
            self.model.train(was)

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far, over every fit (a checkpoint keeps the count)."""
        return self._native.global_step

    # --- data-parallel ---------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """True on rank 0 (and when not distributed): the process that shows progress and writes files."""
        return self.rank == 0

    def _shard(self, loader: DataLoader, pad: bool) -> DataLoader:
        """This rank's shard of ``loader`` (padded for training, a partition for evaluation)."""
        if self.process_group is None or not isinstance(loader, DataLoader):
            return loader  # torch's loaders are sharded by their sampler (DistributedSampler), as given
        if loader.world_size == self.world_size and loader.rank == self.rank:
            return loader
        if loader.world_size != 1:
            raise ValueError(
                f"loader: is sharded as rank {loader.rank} of {loader.world_size}, but this process is rank "
                f"{self.rank} of {self.world_size}; pass the unsharded loader and the trainer shards it"
            )
        key = (id(loader), pad)
        cached = self._shards.get(key)
        if cached is None or cached[0] is not loader:
            # One permutation for all ranks: rank 0's seed wins (seed=None draws a different one per rank).
            seed = self.process_group.broadcast_object(loader.seed)
            cached = (loader, loader.shard(self.rank, self.world_size, pad_shards=pad, seed=seed))
            self._shards[key] = cached
        return cached[1]

    def _learn_data(self, loader) -> None:
        """The class names and the (C, H, W) input the model is trained on, for predict."""
        if self.classes is None and getattr(loader.dataset, "classes", None):
            self.classes = list(loader.dataset.classes)
        if self.input_shape is None and _native_loader(loader) is not None:
            self.input_shape = tuple(int(v) for v in loader.image_shape)

    def _as_batch(self, images, transform) -> torch.Tensor:
        from . import inputs as _inputs

        shape = self.input_shape or _builtin_shape(self.model)
        channels, size = (shape[0], tuple(shape[1:])) if shape else (None, None)
        t = transform if transform is not None else (self.eval_transform or T.ToTensor())
        return _inputs.to_batch(images, t, channels, size).to(self.device)

    def predict_logits(self, images, transform=None, tta: bool | int = False, batch_size: int = 256) -> torch.Tensor:
        """Eval-mode logits (N, num_classes) of ``images`` (as ``predict_proba`` takes them)."""
        level = _tta_level(tta)
        x = self._as_batch(images, transform)
        with self._in_eval(tuple(x.shape[1:])) as native:
            return _rs.predict_logits(native, x, batch_size=batch_size, tta=level)

    def predict_proba(self, images, transform=None, tta: bool | int = False, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities (N, num_classes). ``images``: a normalised float tensor, or uint8
        images (numpy (N, H, W, C) or tensor (N, C, H, W)) that get ``transform`` (default: the
        deterministic part of the training transform: ToTensor and Normalize). ``tta`` averages
        with the horizontal mirror (True or 1), and with one-pixel translations too (2)."""
        return torch.softmax(self.predict_logits(images, transform, tta, batch_size), dim=1)

    def predict(self, images, transform=None, tta: bool | int = False, batch_size: int = 256, names: bool = False):
        """Predicted class indices (N,), or their names with ``names=True`` (``trainer.classes``).
        ``images``: file paths, PIL images (any mode and size: converted and resized to the
        training input), uint8 arrays or tensors, or a normalised float batch."""
        idx = self.predict_logits(images, transform, tta, batch_size).argmax(1)
        if not names:
            return idx
        if not self.classes:
            raise ValueError(
                "names=True: this trainer knows no class names yet (they come from the training data set's "
                ".classes at fit, or from a checkpoint); fit first, or set trainer.classes = [...] "
                "(or use predict(...) without names for the indices)"
            )
        return [self.classes[i] for i in idx.tolist()]

    # --- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The checkpoint: the seed's keys (epoch, model_state_dict, optimizer_state_dict,
        scheduler_state_dict, accuracy) plus history and what fastcifar needs to resume."""
        self._bridge.export_state(self._native)
        rs = self._bridge.rust_schedule
        return {
            "epoch": self.epoch,
            "model_state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "optimizer_state_dict": to_cpu(self.optimizer.state_dict()),
            "scheduler_state_dict": self._native.scheduler_state()
            if rs is not None
            else (self.scheduler.state_dict() if self.scheduler is not None else None),
            "accuracy": self.best_accuracy,
            "history": self.history.to_dict(),
            "fastcifar": {
                "version": CHECKPOINT_VERSION,
                "model": self.model.config if isinstance(self.model, Module) else None,
                "model_class": model_class(self.model),
                "optimizer": describe(self.optimizer, self.model),
                "lookahead_ema": to_cpu(self._native.lookahead_state()),
                "scheduler": describe(self.scheduler),
                "trainer": dict(self.config),
                "global_step": self._native.global_step,
                "rng_state": torch.get_rng_state(),
                "eval_transform": T.to_config(self.eval_transform),
                "classes": self.classes,
                "input_shape": list(self.input_shape) if self.input_shape else None,
            },
        }

    def save_weights(self, path) -> None:
        """Writes ``model.state_dict()`` alone (CPU tensors), atomically: the tutorial's
        ``torch.save(model.state_dict(), path)``, which ``model.load_state_dict(torch.load(path))``
        reads. When training data-parallel, only rank 0 writes."""
        if not self.is_main:
            return
        sd = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        atomic_write(os.fspath(path), lambda tmp: torch.save(sd, tmp))

    def save(self, path) -> None:
        """Writes the checkpoint with ``torch.save``, atomically (temporary file, then rename).
        When training data-parallel, only rank 0 writes."""
        if not self.is_main:
            return
        sd = self.state_dict()
        atomic_write(os.fspath(path), lambda tmp: torch.save(sd, tmp))

    def load_state_dict(self, ckpt: dict) -> None:
        """Restores model, optimizer, schedule, history, epoch and RNG state (to resume).

        The checkpoint's optimizer and schedule must be this trainer's (same kind and settings):
        a different one is refused by name rather than half-loaded. ``Trainer.load(path)`` builds
        the trainer the checkpoint describes."""
        check_same_optimizer(ckpt, self.optimizer, self.scheduler)
        try:
            self.model.load_state_dict(ckpt["model_state_dict"], strict=True)
            self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        except KeyError as e:
            raise ValueError(f"checkpoint: missing {e}") from None
        sd = ckpt.get("scheduler_state_dict")
        if sd is not None and self._bridge.rust_schedule is not None:
            self._native.load_scheduler_state(dict(sd))
        elif sd is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(sd)
        self._bridge.import_state(self._native)
        self._bridge.mark_synced()
        self.epoch = int(ckpt.get("epoch", 0))
        self.best_accuracy = ckpt.get("accuracy")
        self.history = History(ckpt.get("history", {}).get("epochs", []), ckpt.get("history", {}).get("interrupted"))
        meta = ckpt.get("fastcifar", {})
        if "global_step" in meta:
            self._native.set_global_step(int(meta["global_step"]))
        if "rng_state" in meta:
            torch.set_rng_state(meta["rng_state"])
        if meta.get("eval_transform"):
            self.eval_transform = T.from_config(meta["eval_transform"])
        if meta.get("classes"):
            self.classes = list(meta["classes"])
        if meta.get("input_shape"):
            self.input_shape = tuple(meta["input_shape"])
        if self.lookahead is not None:
            self._native.load_lookahead_state(meta.get("lookahead_ema"))
        self._native.sync_device(self._native_model())

    def load_checkpoint(self, path) -> Trainer:
        self.load_state_dict(read_checkpoint(path))
        return self

    @classmethod
    def load(cls, path, device="auto", model: torch.nn.Module | None = None, optimizer=None, scheduler=None) -> Trainer:
        """Rebuilds model, optimizer, schedule and trainer from a checkpoint written by ``save`` (or
        ``fit(checkpoint=...)``'s ``.ckpt.pth``), ready to evaluate, predict or resume ``fit``.

        The model: a built-in from its settings; your own class imported from the
        ``module:qualname`` recorded at save time, built with ``num_classes``, ``in_channels``
        and ``input_size`` from the training data where its constructor takes them (none
        otherwise). Pass ``model=``
        when it cannot be (a class in ``__main__`` or a function, or one that needs arguments).
        torch.optim optimizers (with their parameter groups) and torch's schedules are built
        again from the arguments recorded at save time, then loaded with their state; pass
        ``optimizer=`` / ``scheduler=`` for what cannot be (your own optimizer class, LambdaLR's
        function, SequentialLR's parts)."""
        ckpt = read_checkpoint(path)
        meta = ckpt.get("fastcifar")
        if not meta:
            raise ValueError(
                f"{path}: not a fastcifar checkpoint (no 'fastcifar' entry); load weights with model.load_state_dict()"
            )
        if model is None:
            if meta.get("model"):
                model = Module.from_config(meta["model"])
            elif meta.get("model_class"):
                # Given what the data told (as the CLI builds --model module:Class), where it takes them.
                shape, classes = meta.get("input_shape"), meta.get("classes")
                known = {"num_classes": len(classes)} if classes else {}
                if shape:
                    known.update(in_channels=int(shape[0]), input_size=int(shape[1]))
                model = import_model(meta["model_class"], path, **known)
            else:
                raise ValueError(
                    f"{path}: holds the weights of your own module, whose class was defined in __main__ or a "
                    f"function (no import can find it); pass it: Trainer.load(path, model=YourModule(...))"
                )
        if optimizer is None:
            optimizer = rebuild_optimizer(meta.get("optimizer"), model, path)
        if scheduler is None and meta.get("scheduler"):
            scheduler = rebuild_schedule(meta["scheduler"], path, optimizer)
        tr = cls(model, optimizer, scheduler, device=device, **meta["trainer"])
        tr.load_state_dict(ckpt)
        return tr

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        engine = "graph" if self._compiled.is_graph else "eager forward"
        opt = f"{type(self.optimizer).__name__}(lr={self._bridge.optimizer.param_groups[0]['lr']:g})"
        # fastcifar's schedules name themselves (one restored from a checkpoint is a plain _Schedule).
        name = getattr(self.scheduler, "name", None) or type(self.scheduler).__name__
        sched = f", scheduler={name}" if self.scheduler is not None else ""
        return (
            f"Trainer(model={type(self.model).__name__} ({n:,} parameters, {engine}), device={self.device}, "
            f"optimizer={opt}{sched}, epoch={self.epoch})"
        )


class ScheduleHorizonError(ValueError):
    """A fit would step a OneCycleLR past the ``total_steps`` it was built for (raised before
    training, with the fix)."""


class _OnStep:
    """The Rust loop's progress hook during ``fit`` (every ``log_every`` steps): the rate into
    param_groups, the bar, then the callbacks; one returning False stops training at that step."""

    def __init__(self, bridge: Bridge, bar, callbacks):
        self.bridge, self.bar, self.callbacks = bridge, bar, callbacks
        self.stop_requested = False

    def __call__(self, info: dict) -> bool:
        self.bridge.show(info["lr"], info["momentum"])
        bar = self.bar
        if bar is not None:
            bar.n = info["step"]
            bar.set_postfix(
                loss=f"{info['loss']:.4f}",
                acc=f"{100 * info['accuracy']:.2f}%",
                img_s=f"{info['images'] / max(info['seconds'], 1e-9):,.0f}",
                refresh=False,
            )
            bar.refresh()
        for cb in self.callbacks:
            if cb(dict(info, phase="step")) is False:
                self.stop_requested = True
                return False
        return True


def _epoch_record(e: int, stats) -> dict:
    """The history's record of epoch ``e``'s pass (validation adds its loss and accuracy)."""
    return {
        "epoch": e + 1,
        "loss": stats.loss,
        "accuracy": stats.accuracy,
        "lr": stats.lr,
        "seconds": stats.seconds,
        "images_per_s": stats.images / max(stats.seconds, 1e-9),
    }


def _print_epoch(record: dict, final: int) -> None:
    """The epoch's plain line (logs get it where a bar cannot redraw)."""
    msg = f"Epoch [{record['epoch']}/{final}] loss {record['loss']:.4f} acc {100 * record['accuracy']:.2f}%"
    if "val_accuracy" in record:
        msg += f"  val_loss {record['val_loss']:.4f} val_acc {100 * record['val_accuracy']:.2f}%"
    print(msg + f"  ({record['seconds']:.1f}s, {record['images_per_s']:,.0f} img/s)")


def _check_loader(name: str, loader) -> None:
    if not isinstance(loader, (DataLoader, torch.utils.data.DataLoader)):
        raise TypeError(
            f"{name}: expected a fastcifar.DataLoader or a torch.utils.data.DataLoader, got {type(loader).__name__}"
        )


def _native_loader(loader):
    """The loader's Rust side when all its work is in Rust; else None (the trainer then pulls its
    batches through Python, once per step, with a one-time warning saying why)."""
    fast = fast_path(loader)
    if isinstance(fast, str):
        warn_once(
            ("slow loader", fast),
            f"fastcifar: the trainer pulls this loader's batches through Python (slower): {fast}",
            stacklevel=4,
        )
        return None
    return fast


def _auto_channels_last(device: str, precision: str) -> bool:
    """channels_last where it was measured to pay (README, "CPU training"): bf16 convolutions on a
    CPU (oneDNN's AMX / AVX512 kernels take it without reorders) and every convolution on CUDA."""
    return device.startswith("cuda") or precision == "bf16"


_AMP = {True: "auto", False: "off", None: "off", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "off"}


def _amp_request(amp) -> str:
    """``amp`` as the core's resolver reads it: True (the device's fast dtype), False, "bf16",
    "fp16", or those dtypes as torch writes them; the core refuses what a device cannot honour."""
    if isinstance(amp, str):
        return {"float32": "off", "bfloat16": "bf16", "float16": "fp16"}.get(amp, amp)
    if isinstance(amp, (bool, torch.dtype)) or amp is None:
        if amp in _AMP:
            return _AMP[amp]
        raise ValueError(f"amp: {amp} is not torch.bfloat16 or torch.float16")
    raise TypeError(f"amp: expected True, False, 'bf16', 'fp16' or a torch dtype, got {type(amp).__name__}")


_autocast_noted: set = set()


def _note_caller_autocast(device: str, precision: str) -> None:
    """A ``torch.autocast`` around a call is honoured as torch honours it (the forward runs under
    it) unless the trainer's own ``amp`` says otherwise (the inner setting wins, as nested autocast
    regions do). Either way, say once which precision ran."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if not torch.is_autocast_enabled(kind):
        return
    dtype = str(torch.get_autocast_dtype(kind)).replace("torch.", "")
    ours = {"bf16": "bfloat16", "fp16": "float16"}.get(precision)
    if ours == dtype:
        return
    if ours is None:
        msg = (
            f"fastcifar: the forward runs in {dtype} under the torch.autocast('{kind}') around this call "
            f"(the trainer's amp is off); pass amp={dtype!r} to the Trainer to say so"
        )
    else:
        msg = (
            f"fastcifar: the trainer's amp ({ours}) is used, not the surrounding torch.autocast('{kind}', {dtype}) "
            "(the innermost setting wins, as in nested autocast regions)"
        )
    if msg not in _autocast_noted:
        _autocast_noted.add(msg)
        warnings.warn(msg, stacklevel=4)


def _input_shape(loader) -> tuple | None:
    """The (C, H, W) of a fastcifar loader's batches (None for torch's, known only from a batch)."""
    if isinstance(loader, DataLoader) and _native_loader(loader) is not None:
        return tuple(int(v) for v in loader.image_shape)
    return None


def _float_state(model: torch.nn.Module) -> list:
    """All of a module's floating-point state: its parameters and floating-point buffers (BatchNorm
    statistics), what a lookahead averages."""
    return list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]


def _tta_level(tta) -> int:
    """A TTA level from a bool (mirror or not) or 0, 1, 2; the core refuses other ints by name."""
    if isinstance(tta, bool):
        return int(tta)
    if not isinstance(tta, int) or isinstance(tta, bool) or not 0 <= tta < 256:
        raise ValueError(f"tta: {tta!r} is not 0 (none), 1 or True (mirror), or 2 (mirror and translate)")
    return tta


@contextlib.contextmanager
def _cudnn_benchmark(on: bool):
    """cuDNN's benchmark mode on (the training shapes are fixed, so its algorithm search pays once),
    and the user's setting back on every exit."""
    was = torch.backends.cudnn.benchmark
    if on:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = was


def _builtin_shape(model) -> tuple | None:
    """A built-in's (C, H, W) from its settings, when no data has been seen."""
    cfg = getattr(model, "_config", None) or {}
    if "input_size" not in cfg:
        return None
    s = cfg["input_size"]
    h, w = (s, s) if isinstance(s, int) else s
    return (cfg.get("in_channels", 3), h, w)
