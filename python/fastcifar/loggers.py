"""Loggers for ``Trainer.fit(callbacks=[...])``, beside the history's CSV and JSON files
(``History.to_csv`` / ``to_json``): ``TensorBoardLogger``, with Lightning's names.

    from fastcifar.loggers import TensorBoardLogger
    tb = TensorBoardLogger("runs", name="resnet")      # runs/resnet/version_0, version_1, ...
    trainer.fit(train_loader, val_loader, epochs=10, callbacks=[tb])
    # tensorboard --logdir runs

It writes through ``torch.utils.tensorboard.SummaryWriter``, which needs the ``tensorboard``
package: ``pip install fastcifar[tensorboard]``.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from .callbacks import Callback

__all__ = ["TensorBoardLogger"]

_FIX = "pip install fastcifar[tensorboard] (or pip install tensorboard)"


def _summary_writer():
    """torch's SummaryWriter class; an ImportError naming the fix when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(f"TensorBoardLogger needs the tensorboard package: {_FIX} ({e})") from e
    return SummaryWriter


class TensorBoardLogger(Callback):
    """Writes a fit's metrics as TensorBoard scalars, under ``save_dir/name/version`` (Lightning's
    layout: ``version=None`` takes the next free ``version_N``, an int N is ``version_N``, a str is
    the folder's name; ``sub_dir`` adds one more level). Every epoch: each number of the history's
    record (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ...) at step = the
    epoch; every ``log_every`` steps of the loop: ``step/batch_loss``, ``step/loss`` (the epoch's
    running mean), ``step/accuracy`` and ``step/lr``, at step = batches seen. ``prefix`` is put
    before every tag (``prefix-loss``, Lightning's join). Other keyword arguments go to
    ``SummaryWriter`` (``flush_secs``, ``max_queue``, ...). The file is flushed every epoch."""

    _WHY = {
        "log_graph": "the graph runs in Rust; TensorBoard's graph view needs a torch.jit trace of your module",
        "default_hp_metric": "no hyperparameter metric is written (log_hyperparams writes the settings as text)",
    }

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "fastcifar_logs",
        version: int | str | None = None,
        prefix: str = "",
        sub_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ):
        for k in kwargs:
            if k in self._WHY:
                raise ValueError(f"TensorBoardLogger({k}=...): not supported: {self._WHY[k]}")
        writer_class = _summary_writer()  # now, so a missing package is found before training
        if version is not None and (isinstance(version, bool) or not isinstance(version, (int, str))):
            raise TypeError(f"TensorBoardLogger(version={version!r}): expected None, an int or a str")
        if not isinstance(prefix, str):
            raise TypeError(f"TensorBoardLogger(prefix={prefix!r}): expected a str")
        self.save_dir = os.fspath(save_dir)
        self.name = name or ""
        self._version = version
        self.prefix = prefix
        self.sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._writer_class, self._kwargs = writer_class, kwargs
        self._experiment = None

    @property
    def root_dir(self) -> str:
        return os.path.join(self.save_dir, self.name)

    @property
    def version(self) -> int | str:
        """The run's version: the next free ``version_N`` under ``root_dir`` when not given."""
        if self._version is None:
            taken = []
            if os.path.isdir(self.root_dir):
                for d in os.listdir(self.root_dir):
                    m = re.fullmatch(r"version_(\d+)", d)
                    if m and os.path.isdir(os.path.join(self.root_dir, d)):
                        taken.append(int(m.group(1)))
            self._version = max(taken) + 1 if taken else 0
        return self._version

    @property
    def log_dir(self) -> str:
        v = self.version
        d = os.path.join(self.root_dir, v if isinstance(v, str) else f"version_{v}")
        return os.path.join(d, self.sub_dir) if self.sub_dir else d

    @property
    def experiment(self):
        """The ``SummaryWriter`` (made on first use), for anything else you want to write."""
        if self._experiment is None:
            self._experiment = self._writer_class(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    def _tag(self, k: str) -> str:
        return f"{self.prefix}-{k}" if self.prefix else k

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Writes each number of ``metrics`` as a scalar at ``step``."""
        for k, v in metrics.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            self.experiment.add_scalar(self._tag(k), float(v), step)

    def log_hyperparams(self, params: dict) -> None:
        """Writes the settings as a text table (tag ``hparams``)."""
        rows = "\n".join(f"| {k} | {v!r} |" for k, v in params.items())
        self.experiment.add_text(self._tag("hparams"), "| setting | value |\n| --- | --- |\n" + rows)

    def on_fit_start(self, trainer, keys: tuple) -> None:
        self.log_hyperparams({"trainer": repr(trainer), **trainer.config})

    def __call__(self, info: dict) -> bool | None:
        phase = info.get("phase")
        if phase == "step":
            # Batches seen since the first epoch (a continued fit writes on after the last one).
            x = int(info["epoch"]) * int(info["steps"]) + int(info["step"])
            m = {f"step/{k}": info[k] for k in ("batch_loss", "loss", "accuracy", "lr") if k in info}
            self.log_metrics(m, x)
        elif phase == "epoch":
            m = {
                k: v
                for k, v in info.items()
                if k not in ("phase", "epoch") and not (isinstance(v, float) and math.isnan(v))
            }
            self.log_metrics(m, int(info["epoch"]))
            self.experiment.flush()
        return None

    def finalize(self) -> None:
        """Flushes and closes the writer (a later write opens it again)."""
        if self._experiment is not None:
            self._experiment.close()
            self._experiment = None

    close = finalize

    def __repr__(self) -> str:
        return f"TensorBoardLogger(log_dir={self.log_dir!r})"
