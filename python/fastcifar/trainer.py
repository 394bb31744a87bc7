"""``Trainer``: fit / evaluate / predict / save, with the per-step loop in Rust.

    trainer = fastcifar.Trainer(model, optimizer=fastcifar.optim.Adam(lr=1e-3, weight_decay=1e-4),
                                scheduler=fastcifar.optim.lr_scheduler.ReduceLROnPlateau(mode="min", patience=3))
    history = trainer.fit(trainloader, testloader, epochs=50, checkpoint="best_model.pth")
    report = trainer.evaluate(testloader)     # loss, accuracy, per-class accuracy, confusion matrix
    trainer.save("checkpoint.pth")            # torch.load() reads it: the seed's checkpoint shape
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import _graph
from . import _native as _rs
from . import distributed as _dist
from . import optim as _optim
from . import transforms as T
from ._io import atomic_write
from .loader import DataLoader
from .models import Module

__all__ = ["Trainer", "History", "EvalReport"]

CHECKPOINT_VERSION = 1


class History:
    """Per-epoch records of a fit: ``history["loss"]``, ``history["val_accuracy"]``, ... are lists
    (as Keras' ``History.history``); ``history.epochs`` holds one dict per epoch."""

    def __init__(self, epochs: Optional[List[dict]] = None):
        self.epochs: List[dict] = list(epochs or [])

    def append(self, record: dict) -> None:
        self.epochs.append(dict(record))

    @property
    def history(self) -> Dict[str, list]:
        keys = []
        for r in self.epochs:
            keys += [k for k in r if k not in keys]
        return {k: [r.get(k) for r in self.epochs] for k in keys}

    def __getitem__(self, key: str) -> list:
        return [r.get(key) for r in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)

    def __iter__(self):
        return iter(self.epochs)

    def to_dict(self) -> dict:
        return {"epochs": [dict(r) for r in self.epochs]}

    def to_json(self, path) -> None:
        atomic_write(os.fspath(path), lambda tmp: open(tmp, "w").write(json.dumps(self.to_dict(), indent=2)))

    def to_csv(self, path) -> None:
        h = self.history
        keys = list(h)

        def write(tmp):
            with open(tmp, "w") as f:
                f.write(",".join(keys) + "\n")
                for r in self.epochs:
                    f.write(",".join("" if r.get(k) is None else str(r.get(k)) for k in keys) + "\n")

        atomic_write(os.fspath(path), write)

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else {}
        return f"History({len(self)} epochs, last={ {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()} })"


@dataclass
class EvalReport:
    """Evaluation results. ``per_class`` maps class names to accuracy; ``confusion_matrix[i, j]``
    counts images of class i predicted as j."""

    loss: float
    accuracy: float
    count: int
    classes: List[str]
    confusion_matrix: np.ndarray
    per_class: Dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"Overall Accuracy: {100 * self.accuracy:.2f}%  (loss {self.loss:.4f}, {self.count} images)", "", "Per-class accuracy:"]
        w = max(len(c) for c in self.classes)
        for c in self.classes:
            lines.append(f"  {c:<{w}}  {100 * self.per_class[c]:6.2f}%")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "count": self.count, "classes": list(self.classes),
                "per_class": dict(self.per_class), "confusion_matrix": self.confusion_matrix.tolist()}


def _resolve_device(device) -> str:
    d = str(device)
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: '{d}' was asked for, but CUDA is not available here (torch.cuda.is_available() is False)")
    if d != "cpu" and not d.startswith("cuda"):
        raise ValueError(f"device: '{d}' is not 'cpu', 'cuda', 'cuda:N' or 'auto'")
    return d


def _bar(total, desc, enabled):
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

    ``device="auto"`` picks CUDA when present. ``amp=True`` on CUDA trains in mixed precision
    (fp16 autocast with dynamic loss scaling); on CPU it warns and trains in float32.
    ``seed`` seeds torch's generator (weight init of models built afterwards, dropout).

    Data-parallel: under torchrun (or with ``distributed=True``) the trainer joins
    torch.distributed's process group (``fastcifar.distributed``), takes rank 0's initial weights,
    averages gradients across ranks every optimizer step (``bucket_cap_mb`` per all-reduce), and
    shards its loaders (``batch_size`` is per rank). BatchNorm statistics stay local unless
    ``sync_bn=True``; without it, rank 0's running statistics are broadcast after every epoch, so
    all ranks hold the same model. ``evaluate`` reports over all ranks' shards. Only rank 0 shows
    progress and writes checkpoints (``save`` does nothing elsewhere).
    """

    def __init__(self, model: torch.nn.Module, optimizer: Optional[_optim.Optimizer] = None, scheduler=None, loss: str = "cross_entropy",
                 label_smoothing: float = 0.0, device="auto", amp: bool = False, grad_accum_steps: int = 1,
                 grad_clip: Optional[float] = None, seed: Optional[int] = None, log_every: int = 20,
                 distributed: Optional[bool] = None, sync_bn: bool = False, bucket_cap_mb: float = 25.0,
                 lookahead: Optional[_optim.Lookahead] = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module (your own or fastcifar.models), got {type(model).__name__}")
        if loss != "cross_entropy":
            raise ValueError(f"loss: '{loss}' is not supported (only 'cross_entropy')")
        optimizer = optimizer if optimizer is not None else _optim.Adam()
        if not isinstance(optimizer, _optim.Optimizer):
            raise TypeError(f"optimizer: expected a fastcifar.optim optimizer (SGD, Adam, AdamW), got {type(optimizer).__name__}")
        if scheduler is not None and not isinstance(scheduler, _optim._Schedule):
            raise TypeError(f"scheduler: expected a fastcifar.optim.lr_scheduler schedule, got {type(scheduler).__name__}")
        for name, v in (("grad_accum_steps", grad_accum_steps), ("log_every", log_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive int, got {v!r}")
        if distributed is None:
            distributed = _dist.launched() or _dist.active()
        if sync_bn and not distributed:
            raise ValueError("sync_bn: needs data-parallel training (launch with torchrun, or pass distributed=True)")
        self.process_group: Optional[_dist.ProcessGroup] = None
        if distributed:
            self.process_group, device = _dist.init(device)
        self.rank = self.process_group.rank if self.process_group else 0
        self.world_size = self.process_group.world_size if self.process_group else 1
        self.sync_bn = bool(sync_bn)
        if seed is not None:
            torch.manual_seed(seed + self.rank)  # different dropout masks per rank; weights come from rank 0
        self.device = _resolve_device(device)
        if amp and not self.device.startswith("cuda"):
            warnings.warn("amp=True needs a CUDA device; training in float32 on CPU", stacklevel=2)
        self.model = model.to(self.device)
        self._compiled = _graph.compile(self.model)
        self._fingerprint = _graph.fingerprint(self.model)
        if sync_bn and not self._compiled.is_graph:
            raise ValueError(f"sync_bn: needs the model on the Rust graph, but {type(model).__name__} runs in eager PyTorch (see the "
                             f"warning above); convert its BatchNorm layers with torch.nn.SyncBatchNorm.convert_sync_batchnorm instead")
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.config = {"label_smoothing": float(label_smoothing), "amp": bool(amp), "grad_accum_steps": grad_accum_steps,
                       "grad_clip": None if grad_clip is None else float(grad_clip), "log_every": log_every}
        params = optimizer.params if optimizer.params is not None else [p for p in model.parameters() if p.requires_grad]
        self._native = _rs.NativeTrainer(
            self._compiled, params, optimizer.name, optimizer.settings(),
            scheduler.name if scheduler is not None else None, scheduler.settings() if scheduler is not None else {},
            float(label_smoothing), bool(amp), grad_accum_steps, None if grad_clip is None else float(grad_clip), log_every,
        )
        optimizer._trainer = self
        groups = optimizer._group_settings()
        if groups is not None:
            self._native.set_param_groups(*groups)
        self._set_lookahead(lookahead)
        if self.process_group is not None:
            self.process_group.broadcast(list(model.parameters()) + list(model.buffers()))
            self._native.set_process_group(self.process_group, float(bucket_cap_mb))
        self._shards: Dict[tuple, tuple] = {}
        self.history = History()
        self.epoch = 0
        self.best_accuracy: Optional[float] = None
        self.eval_transform: Optional[T.Transform] = None

    def _set_lookahead(self, lookahead) -> None:
        """Binds a ``fastcifar.optim.Lookahead`` (or its settings dict, from a checkpoint) to the
        module's floating-point state: its parameters and floating-point buffers."""
        if isinstance(lookahead, dict):
            lookahead = _optim.Lookahead(**lookahead)
        if lookahead is not None and not isinstance(lookahead, _optim.Lookahead):
            raise TypeError(f"lookahead: expected a fastcifar.optim.Lookahead, got {type(lookahead).__name__}")
        self.lookahead = lookahead
        self.config["lookahead"] = None if lookahead is None else lookahead.settings()
        self._lookahead_ids = None
        if lookahead is not None:
            tensors = list(self.model.parameters()) + [b for b in self.model.buffers() if b.is_floating_point()]
            self._native.set_lookahead(tensors, **lookahead.settings())
            self._lookahead_ids = [id(t) for t in tensors]

    # --- training --------------------------------------------------------------------------
    def fit(self, train_loader: DataLoader, val_loader: Optional[DataLoader] = None, epochs: int = 1,
            checkpoint=None, callbacks: Sequence[Callable[[dict], Optional[bool]]] = (), progress: bool = True,
            max_steps: Optional[int] = None) -> History:
        """Trains ``epochs`` more epochs; returns the history.

        Epoch e draws its shuffle and augmentations from ``train_loader``'s seed and e, so a fit
        resumed from a checkpoint continues exactly. With ``checkpoint``, the full checkpoint is
        written (atomically) whenever validation accuracy improves (every epoch without
        ``val_loader``). ``callbacks`` get a dict every ``log_every`` steps and at each epoch end;
        one returning False stops training. Ctrl-C stops at the next step boundary and returns the
        history so far, with the model usable. ``max_steps`` ends training once the trainer has
        taken that many optimizer steps in all (mid-epoch: that epoch ends there and is recorded
        as usual), e.g. airbench's 9.9 epochs.
        """
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0):
            raise ValueError(f"max_steps: must be a non-negative int or None, got {max_steps!r}")
        if not isinstance(train_loader, DataLoader):
            raise TypeError(f"train_loader: expected a fastcifar.DataLoader, got {type(train_loader).__name__}")
        if val_loader is not None and not isinstance(val_loader, DataLoader):
            raise TypeError(f"val_loader: expected a fastcifar.DataLoader, got {type(val_loader).__name__}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs: must be a non-negative int, got {epochs!r}")
        if train_loader.dtype != torch.float32:
            raise ValueError("train_loader: yields uint8 batches; the trainer needs float32 (dtype=torch.float32)")
        if self.eval_transform is None:
            src = val_loader.transform if val_loader is not None else train_loader.transform
            self.eval_transform = T.deterministic_part(src)
        progress = progress and self.is_main
        native = self._native_model()
        if self.lookahead is not None:
            tensors = list(self.model.parameters()) + [b for b in self.model.buffers() if b.is_floating_point()]
            if [id(t) for t in tensors] != self._lookahead_ids:  # the module's tensors were replaced (.to(), a new layer)
                self._set_lookahead(self.lookahead)
        self._native.set_max_steps(max_steps)
        self.model.train()
        source, train_loader = train_loader, self._shard(train_loader, pad=True)
        final = self.epoch + epochs
        for _ in range(epochs):
            e = self.epoch
            bar = _bar(len(train_loader), f"Epoch {e + 1}/{final}", progress)
            stop_requested = False

            def on_step(info):
                nonlocal stop_requested
                if bar is not None:
                    bar.n = info["step"]
                    bar.set_postfix(loss=f"{info['loss']:.4f}", acc=f"{100 * info['accuracy']:.2f}%",
                                    img_s=f"{info['images'] / max(info['seconds'], 1e-9):,.0f}", refresh=False)
                    bar.refresh()
                for cb in callbacks:
                    if cb(dict(info, phase="step")) is False:
                        stop_requested = True
                        return False
                return True

            if self.sync_bn:
                self._compiled.set_sync_bn(_dist.sync_batch_norm(self.process_group))
            try:
                stats, interrupted = self._native.train_epoch(native, train_loader._native, e, on_step)
            finally:
                if self.sync_bn:
                    self._compiled.set_sync_bn(None)
                if bar is not None:
                    bar.close()
            if self.process_group is not None and not self.sync_bn:
                self.process_group.broadcast(list(self.model.buffers()))
            source.epoch = train_loader.epoch = e + 1
            record = {"epoch": e + 1, "loss": stats["loss"], "accuracy": stats["accuracy"], "lr": stats["lr"],
                      "seconds": stats["seconds"], "images_per_s": stats["images"] / max(stats["seconds"], 1e-9)}
            if interrupted or stats["stopped"]:
                record["interrupted"] = True
                self.history.append(record)
                if interrupted and self.is_main:
                    print(f"Interrupted during epoch {e + 1}: stopped at a step boundary; the model and history are usable.")
                break
            if val_loader is not None:
                rep = self.evaluate(val_loader, progress=False)
                record["val_loss"], record["val_accuracy"] = rep.loss, rep.accuracy
            metric = record.get("val_loss", record["loss"])
            self._native.end_epoch(metric)
            self.epoch = e + 1
            self.history.append(record)
            if progress:
                msg = f"Epoch [{e + 1}/{final}] loss {record['loss']:.4f} acc {100 * record['accuracy']:.2f}%"
                if "val_accuracy" in record:
                    msg += f"  val_loss {record['val_loss']:.4f} val_acc {100 * record['val_accuracy']:.2f}%"
                print(msg + f"  ({record['seconds']:.1f}s, {record['images_per_s']:,.0f} img/s)")
            acc = record.get("val_accuracy")
            improved = acc is not None and (self.best_accuracy is None or acc > self.best_accuracy)
            if improved:
                self.best_accuracy = acc
            if checkpoint is not None and (improved or val_loader is None):
                self.save(checkpoint)
            if any(cb(dict(record, phase="epoch")) is False for cb in callbacks) or stop_requested:
                break
            if max_steps is not None and self._native.global_step >= max_steps:
                break
        return self.history

    # --- evaluation and prediction ---------------------------------------------------------
    def evaluate(self, loader: DataLoader, progress: bool = True, tta: int = 0) -> EvalReport:
        """Loss (mean over images), accuracy, per-class accuracy and the confusion matrix.
        ``tta`` (test-time augmentation, as airbench): 0 none, 1 (or True) the mean of the
        logits of each image and its mirror, 2 also two one-pixel translations (reflect-padded)."""
        tta = _tta_level(tta)
        if not isinstance(loader, DataLoader):
            raise TypeError(f"loader: expected a fastcifar.DataLoader, got {type(loader).__name__}")
        loader = self._shard(loader, pad=False)
        bar = _bar(len(loader), "Evaluate", progress and self.is_main)

        def cb(i, n):
            if bar is not None:
                bar.n = i
                bar.refresh()

        try:
            was = self.model.training
            native = self._native_model()
            self.model.eval()
            loss, acc, count, conf, nc = _rs.evaluate(native, loader._native, cb, tta)
        finally:
            self.model.train(was)
            if bar is not None:
                bar.close()
        if self.process_group is not None:
            # Every rank reports over the whole data set: sum the counts of all shards.
            tot = self.process_group.sum([loss * count, float(count)] + [float(v) for v in conf])
            count = int(tot[1])
            loss = tot[0] / max(count, 1)
            conf = [int(round(v)) for v in tot[2:]]
            acc = sum(conf[i * nc + i] for i in range(nc)) / max(count, 1)
        cm = np.asarray(conf, dtype=np.int64).reshape(nc, nc)
        classes = list(loader.dataset.classes) if len(loader.dataset.classes) == nc else [str(i) for i in range(nc)]
        totals = cm.sum(1)
        per_class = {c: float(cm[i, i] / totals[i]) if totals[i] else float("nan") for i, c in enumerate(classes)}
        return EvalReport(loss, acc, count, classes, cm, per_class)

    # --- the module on the engine -------------------------------------------------------------
    def _native_model(self):
        """The compiled module, brought up to date: the same graph over the module's current
        tensors (after ``.to()``, which replaces buffers), or a fresh capture when the module's
        structure or settings changed since the last one."""
        p = next(iter(self.model.parameters()), None)
        if p is not None and str(p.device) != self.device and not (self.device == "cuda" and p.device.type == "cuda" and p.device.index == 0):
            raise ValueError(f"model: its parameters are on {p.device}, but this trainer trains on {self.device}; move the model back "
                             f"with model.to('{self.device}') (or build a Trainer with device='{p.device}')")
        fp = _graph.fingerprint(self.model)
        if fp != self._fingerprint:
            self._compiled = _graph.compile(self.model)
            self._fingerprint = fp
        else:
            self._compiled.rebind(*_graph.module_tensors(self.model))
        return self._compiled

    # --- data-parallel ---------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """True on rank 0 (and when not distributed): the process that shows progress and writes files."""
        return self.rank == 0

    def _shard(self, loader: DataLoader, pad: bool) -> DataLoader:
        """This rank's shard of ``loader`` (padded for training, a partition for evaluation)."""
        if self.process_group is None:
            return loader
        if loader.world_size == self.world_size and loader.rank == self.rank:
            return loader
        if loader.world_size != 1:
            raise ValueError(f"loader: is sharded as rank {loader.rank} of {loader.world_size}, but this process is rank "
                             f"{self.rank} of {self.world_size}; pass the unsharded loader and the trainer shards it")
        key = (id(loader), pad)
        cached = self._shards.get(key)
        if cached is None or cached[0] is not loader:
            # One permutation for all ranks: rank 0's seed wins (seed=None draws a different one per rank).
            seed = self.process_group.broadcast_object(loader.seed)
            cached = (loader, loader.shard(self.rank, self.world_size, pad_shards=pad, seed=seed))
            self._shards[key] = cached
        return cached[1]

    def _as_batch(self, images, transform) -> torch.Tensor:
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            x = images if images.dim() == 4 else images.unsqueeze(0)
            return x.to(self.device)
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8:
                raise TypeError(f"images: expected float or uint8, got {images.dtype}")
            arr = images.cpu().numpy()
            arr = arr[None] if arr.ndim == 3 else arr
            if arr.ndim != 4:
                raise ValueError(f"images: expected (N, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
            arr = arr.transpose(0, 2, 3, 1)
        else:
            arr = np.asarray(images)
            if arr.dtype != np.uint8:
                raise TypeError(f"images: expected uint8 images (N, H, W, C) or a float tensor, got dtype {arr.dtype}")
            arr = arr[None] if arr.ndim == 3 else arr
            if arr.ndim != 4:
                raise ValueError(f"images: expected (N, H, W, C) or (H, W, C), got shape {arr.shape}")
        from .datasets import Dataset

        t = transform if transform is not None else (self.eval_transform or T.ToTensor())
        ds = Dataset.from_numpy(np.ascontiguousarray(arr), [0] * len(arr), classes=["_"])
        loader = DataLoader(ds, batch_size=len(arr), transform=t, seed=0)
        x, _ = loader._native.batch(list(range(len(arr))), 0)
        return x.to(self.device)

    def predict_logits(self, images, transform=None, tta: bool = False, batch_size: int = 256) -> torch.Tensor:
        x = self._as_batch(images, transform)
        was = self.model.training
        try:
            native = self._native_model()
            self.model.eval()
            return _rs.predict_logits(native, x, batch_size, _tta_level(tta))
        finally:
            self.model.train(was)

    def predict_proba(self, images, transform=None, tta: bool = False, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities (N, num_classes). ``images``: a normalised float tensor, or uint8
        images (numpy (N, H, W, C) or tensor (N, C, H, W)) that get ``transform`` (default: the
        deterministic part of the training transform: ToTensor and Normalize). ``tta`` averages
        with the horizontal mirror (True or 1), and with one-pixel translations too (2)."""
        return torch.softmax(self.predict_logits(images, transform, tta, batch_size), dim=1)

    def predict(self, images, transform=None, tta: bool = False, batch_size: int = 256) -> torch.Tensor:
        """Predicted class indices (N,)."""
        return self.predict_logits(images, transform, tta, batch_size).argmax(1)

    # --- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The checkpoint: the seed's keys (epoch, model_state_dict, optimizer_state_dict,
        scheduler_state_dict, accuracy) plus history and what fastcifar needs to resume."""
        sched = self._native.scheduler_state()
        return {
            "epoch": self.epoch,
            "model_state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "optimizer_state_dict": _to_cpu(self.optimizer.state_dict()),
            "scheduler_state_dict": sched,
            "accuracy": self.best_accuracy,
            "history": self.history.to_dict(),
            "fastcifar": {
                "version": CHECKPOINT_VERSION,
                "model": self.model.config if isinstance(self.model, Module) else None,
                "optimizer": {"name": self.optimizer.name, "settings": self.optimizer.settings(), "groups": self._group_names()},
                "scheduler": None if self.scheduler is None else {"name": self.scheduler.name, "settings": self.scheduler.settings()},
                "trainer": dict(self.config),
                "global_step": self._native.global_step,
                "rng_state": torch.get_rng_state(),
                "eval_transform": T.to_config(self.eval_transform),
                "lookahead_ema": _to_cpu(self._native.lookahead_state()) if self.lookahead is not None else None,
            },
        }

    def _group_names(self):
        """The optimizer's parameter groups by parameter name ([names], lr, weight_decay), so that
        ``Trainer.load`` rebuilds them; None without groups."""
        if not self.optimizer.groups:
            return None
        name_of = {id(p): n for n, p in self.model.named_parameters()}
        out, i = [], 0
        for n, lr, wd in self.optimizer.groups:
            out.append([[name_of.get(id(p), "?") for p in self.optimizer.params[i:i + n]], lr, wd])
            i += n
        return out

    def save(self, path) -> None:
        """Writes the checkpoint with ``torch.save``, atomically (temporary file, then rename).
        When training data-parallel, only rank 0 writes."""
        if not self.is_main:
            return
        sd = self.state_dict()
        atomic_write(os.fspath(path), lambda tmp: torch.save(sd, tmp))

    def load_state_dict(self, ckpt: dict) -> None:
        """Restores model, optimizer, schedule, history, epoch and RNG state (to resume)."""
        try:
            self.model.load_state_dict(ckpt["model_state_dict"], strict=True)
            self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        except KeyError as e:
            raise ValueError(f"checkpoint: missing {e}") from None
        if ckpt.get("scheduler_state_dict") is not None:
            self._native.load_scheduler_state({k: float(v) for k, v in ckpt["scheduler_state_dict"].items()})
        self.epoch = int(ckpt.get("epoch", 0))
        self.best_accuracy = ckpt.get("accuracy")
        self.history = History(ckpt.get("history", {}).get("epochs", []))
        meta = ckpt.get("fastcifar", {})
        if "global_step" in meta:
            self._native.set_global_step(int(meta["global_step"]))
        if "rng_state" in meta:
            torch.set_rng_state(meta["rng_state"])
        if meta.get("eval_transform"):
            self.eval_transform = T.from_config(meta["eval_transform"])
        if self.lookahead is not None:
            self._native.load_lookahead_state(meta.get("lookahead_ema"))
        self._native.sync_device(self._native_model())

    def load_checkpoint(self, path) -> "Trainer":
        self.load_state_dict(_read_checkpoint(path))
        return self

    @classmethod
    def load(cls, path, device="auto", model: Optional[torch.nn.Module] = None) -> "Trainer":
        """Rebuilds model, optimizer, schedule and trainer from a checkpoint written by ``save``,
        ready to evaluate, predict or resume ``fit``. A checkpoint of your own module needs that
        module: ``Trainer.load(path, model=MyNet())`` (its weights are then loaded into it)."""
        ckpt = _read_checkpoint(path)
        meta = ckpt.get("fastcifar")
        if not meta:
            raise ValueError(f"{path}: not a fastcifar checkpoint (no 'fastcifar' entry); load weights with model.load_state_dict()")
        if model is None:
            if not meta.get("model"):
                raise ValueError(f"{path}: holds the weights of your own module, which a checkpoint cannot rebuild; "
                                 f"pass it: Trainer.load(path, model=YourModule(...))")
            model = Module.from_config(meta["model"])
        opt_cls = {"SGD": _optim.SGD, "Adam": _optim.Adam, "AdamW": _optim.AdamW}[meta["optimizer"]["name"]]
        s = dict(meta["optimizer"]["settings"])
        if "beta1" in s:
            s["betas"] = (s.pop("beta1"), s.pop("beta2"))
        if "nesterov" in s:
            s["nesterov"] = bool(s["nesterov"])
        names = dict(model.named_parameters())
        groups = meta["optimizer"].get("groups")
        if groups:
            s["params"] = [dict({"params": [names[n] for n in ns]}, **({"lr": lr} if lr is not None else {}),
                                **({"weight_decay": wd} if wd is not None else {})) for ns, lr, wd in groups]
        optimizer = opt_cls(**s)
        sched = None
        if meta.get("scheduler"):
            sched = _optim._Schedule(**meta["scheduler"]["settings"])
            sched.name = meta["scheduler"]["name"]
        tr = cls(model, optimizer, sched, device=device, **meta["trainer"])
        tr.load_state_dict(ckpt)
        return tr


def _tta_level(tta) -> int:
    if isinstance(tta, bool):
        return int(tta)
    if not isinstance(tta, int) or tta not in (0, 1, 2):
        raise ValueError(f"tta: {tta!r} is not 0 (none), 1 or True (mirror), or 2 (mirror and translate)")
    return tta


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _read_checkpoint(path) -> dict:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint (no 'model_state_dict')")
    return ckpt
