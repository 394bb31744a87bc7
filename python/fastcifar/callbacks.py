"""Callbacks for ``Trainer.fit(callbacks=[...])`` with Lightning's names and arguments:
``EarlyStopping`` and ``ModelCheckpoint``.

    from fastcifar.callbacks import EarlyStopping, ModelCheckpoint
    ckpt = ModelCheckpoint(dirpath="runs/ckpt", monitor="val_accuracy", mode="max", save_top_k=3)
    trainer.fit(train_loader, val_loader, epochs=50,
                callbacks=[EarlyStopping(monitor="val_loss", patience=5), ckpt])
    model.load_state_dict(torch.load(ckpt.best_model_path))   # the tutorial's load line

They are the plain callbacks ``fit`` already takes (called with each step's and each epoch's
dict; False stops training), so they run beside the Rust loop, once per epoch, and cost nothing
per step. A monitor is a key of ``fit``'s history record: ``loss``, ``accuracy``, ``lr`` and, with a
validation loader, ``val_loss`` and ``val_accuracy``; another name is refused at the start of
``fit`` with the keys that exist.
"""

from __future__ import annotations

import difflib
import math
import os
import string
from typing import Any

import torch

from ._args import whole
from ._files import atomic_write

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint"]

#: The keys of every epoch's history record (``Trainer.fit`` writes them), then those that a
#: validation loader adds. tests/test_callbacks.py checks them against a real fit's history.
EPOCH_KEYS = ("epoch", "loss", "accuracy", "lr", "seconds", "images_per_s")
VAL_KEYS = ("val_loss", "val_accuracy")
#: What a filename template may name besides the record: the optimizer steps taken so far.
_EXTRA_FIELDS = ("step",)


class Callback:
    """The base of fastcifar's callback objects. ``fit`` calls ``on_fit_start(trainer, keys)``
    once (``keys``: the metrics its history records in this fit), then the object itself with each
    step's dict (``phase="step"``) and each epoch's record (``phase="epoch"``); a False return
    stops training. A plain function works as a callback too."""

    def on_fit_start(self, trainer, keys: tuple) -> None:
        """Binds the callback to the fit about to run; checks its settings against ``keys``."""

    def __call__(self, info: dict) -> bool | None:
        return None


def fit_start(callbacks, trainer, validating: bool) -> None:
    """``Trainer.fit``'s one hook: tells the callback objects among ``callbacks`` what this fit
    records (they refuse a monitor it does not), before anything trains."""
    keys = EPOCH_KEYS + (VAL_KEYS if validating else ())
    for cb in callbacks:
        if isinstance(cb, Callback):
            cb.on_fit_start(trainer, keys)


def _check_monitor(owner: str, monitor: str, keys: tuple) -> None:
    if monitor in keys:
        return
    hint = ""
    near = difflib.get_close_matches(monitor, keys, n=1)
    if near:
        hint = f" (did you mean {near[0]!r}?)"
    if monitor in VAL_KEYS:
        hint = " (fit records it only with a val_loader: pass fit(train_loader, val_loader, ...), or monitor='loss')"
    raise ValueError(
        f"{owner}(monitor={monitor!r}): this fit's history does not record {monitor!r}{hint}; "
        f"it records: {', '.join(k for k in keys if k not in ('epoch', 'seconds'))}"
    )


def _check_mode(owner: str, mode) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"{owner}(mode={mode!r}): mode is 'min' (lower is better) or 'max' (higher is better)")


def _refuse(owner: str, given: dict, why: dict) -> None:
    """Lightning's arguments that have no counterpart here are refused by name, with the reason
    (an argument accepted and then ignored would be worse); any other name is a TypeError."""
    for k in given:
        if k in why:
            raise ValueError(f"{owner}({k}=...): not supported: {why[k]}")
        raise TypeError(f"{owner}() got an unexpected keyword argument '{k}'")


def _number(owner: str, name: str, v, allow_none: bool = False) -> float | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise TypeError(f"{owner}({name}={v!r}): expected a number")
    return float(v)


class EarlyStopping(Callback):
    """Stops ``fit`` when ``monitor`` has not improved for ``patience`` epochs in a row (Lightning's
    ``EarlyStopping``; one check per epoch, after validation). An improvement is a change of more
    than ``min_delta`` in the direction of ``mode``. ``stopping_threshold`` stops as soon as the
    monitor reaches it, ``divergence_threshold`` as soon as it is worse than it, and
    ``check_finite`` when it becomes NaN or infinite. ``strict=False`` lets a monitor that this fit
    does not record pass with a warning (the callback then does nothing) instead of raising.

    After the fit: ``stopped_epoch`` (0 when it did not stop), ``best_score``, ``wait_count``.
    """

    _WHY = {
        "check_on_train_epoch_end": "the check runs once per epoch, after validation, always",
        "log_rank_zero_only": "only rank 0 prints (verbose) in data-parallel training, always",
    }

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        **unsupported: Any,
    ):
        _refuse("EarlyStopping", unsupported, self._WHY)
        if not isinstance(monitor, str):
            raise TypeError(f"EarlyStopping(monitor={monitor!r}): expected the name of a history metric (a str)")
        _check_mode("EarlyStopping", mode)
        self.monitor, self.mode = monitor, mode
        self.min_delta = abs(_number("EarlyStopping", "min_delta", min_delta) or 0.0)
        self.patience = whole("patience", patience, 0, owner="EarlyStopping")
        self.verbose, self.strict, self.check_finite = bool(verbose), bool(strict), bool(check_finite)
        self.stopping_threshold = _number("EarlyStopping", "stopping_threshold", stopping_threshold, True)
        self.divergence_threshold = _number("EarlyStopping", "divergence_threshold", divergence_threshold, True)
        self._reset()
        self._active = True
        self._print = True

    def _reset(self) -> None:
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = math.inf if self.mode == "min" else -math.inf
        #: Why the last fit stopped (None: it did not).
        self.stop_reason: str | None = None

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def on_fit_start(self, trainer, keys: tuple) -> None:
        # Each fit counts its own patience, as Lightning's callback does per trainer.fit.
        self._reset()
        self._print = bool(getattr(trainer, "is_main", True))
        self._active = True
        if self.monitor not in keys:
            if self.strict:
                _check_monitor("EarlyStopping", self.monitor, keys)
            import warnings

            warnings.warn(
                f"EarlyStopping: this fit does not record {self.monitor!r} (strict=False): early stopping is off",
                stacklevel=3,
            )
            self._active = False

    def __call__(self, info: dict) -> bool | None:
        if info.get("phase") != "epoch" or not self._active:
            return None
        current = float(info[self.monitor])
        stop, reason = self._evaluate(current)
        if stop:
            self.stopped_epoch = int(info.get("epoch", 0))
            self.stop_reason = reason
            if self.verbose and self._print:
                print(f"EarlyStopping: {reason}; stopping after epoch {self.stopped_epoch}")
            return False
        return None

    def _evaluate(self, current: float) -> tuple[bool, str]:
        m = self.monitor
        if self.check_finite and not math.isfinite(current):
            return True, f"{m} = {current} is not finite"
        if self.stopping_threshold is not None and not self._better(self.stopping_threshold, current):
            return True, f"{m} = {current:.6g} reached stopping_threshold {self.stopping_threshold:g}"
        if self.divergence_threshold is not None and self._better(self.divergence_threshold, current):
            return True, f"{m} = {current:.6g} is worse than divergence_threshold {self.divergence_threshold:g}"
        shifted = current + self.min_delta if self.mode == "min" else current - self.min_delta
        if self._better(shifted, self.best_score):
            if self.verbose and self._print:
                was = "" if math.isinf(self.best_score) else f" (by {abs(current - self.best_score):.6g})"
                print(f"EarlyStopping: {m} improved to {current:.6g}{was}")
            self.best_score, self.wait_count = current, 0
            return False, ""
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (
                f"{m} did not improve by more than {self.min_delta:g} for {self.wait_count} epochs "
                f"(best {self.best_score:.6g})"
            )
        return False, ""

    def state_dict(self) -> dict:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
        }

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(monitor={self.monitor!r}, mode={self.mode!r}, patience={self.patience}, "
            f"min_delta={self.min_delta:g})"
        )


class ModelCheckpoint(Callback):
    """Saves the model's weights at epoch ends (Lightning's ``ModelCheckpoint``), as plain
    ``state_dict`` files that ``model.load_state_dict(torch.load(path))`` reads, and keeps the
    ``save_top_k`` best by ``monitor`` (``-1``: every epoch's; ``0``: none but ``last``). Without a
    ``monitor`` it keeps the latest (``save_top_k=1``) or every epoch's (``-1``).

    ``filename`` is a ``str.format`` template over the epoch's record (``epoch`` counts from 1, as
    the history does) and ``step`` (optimizer steps so far), ``.pth`` added unless it ends in
    ``.pth`` or ``.pt``; with ``auto_insert_metric_name``, ``"{epoch}-{val_loss:.2f}"`` becomes
    ``epoch=3-val_loss=0.52.pth``. Default: ``"{epoch}-{step}"``. ``dirpath`` (made if missing)
    defaults to ``./checkpoints``. ``save_last`` also writes ``last.pth`` every epoch;
    ``every_n_epochs`` saves every n-th epoch only. ``save_weights_only=False`` writes the full
    trainer checkpoint (``Trainer.load`` reads it) instead of the weights: unlike Lightning, the
    weights are the default, since they are what the tutorial loads. Only rank 0 writes.

    After the fit: ``best_model_path``, ``best_model_score``, ``best_k_models`` (path -> score),
    ``last_model_path``.
    """

    FILE_EXTENSION = ".pth"
    CHECKPOINT_NAME_LAST = "last"
    _WHY = {
        "every_n_train_steps": "checkpoints are written at epoch ends (use max_steps to end an epoch early)",
        "train_time_interval": "checkpoints are written at epoch ends",
        "save_on_train_epoch_end": "checkpoints are written at epoch ends, after validation, always",
        "enable_version_counter": "a file of the same name is replaced (atomically), never renamed",
    }

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | None = None,
        save_top_k: int = 1,
        save_weights_only: bool = True,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_epochs: int | None = None,
        **unsupported: Any,
    ):
        _refuse("ModelCheckpoint", unsupported, self._WHY)
        _check_mode("ModelCheckpoint", mode)
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"ModelCheckpoint(monitor={monitor!r}): expected the name of a history metric or None")
        if filename is not None and not isinstance(filename, str):
            raise TypeError(f"ModelCheckpoint(filename={filename!r}): expected a str.format template, e.g. '{{epoch}}'")
        if save_last not in (None, True, False):
            raise ValueError(f"ModelCheckpoint(save_last={save_last!r}): expected True, False or None")
        self.save_top_k = whole("save_top_k", save_top_k, -1, owner="ModelCheckpoint")
        if monitor is None and self.save_top_k not in (-1, 0, 1):
            raise ValueError(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None): keeping the top {save_top_k} needs a "
                "monitor to rank them by; pass monitor='val_loss' (or another history metric), or save_top_k=-1 "
                "to keep every epoch's"
            )
        self.every_n_epochs = (
            1 if every_n_epochs is None else whole("every_n_epochs", every_n_epochs, 1, owner="ModelCheckpoint")
        )
        self.dirpath = os.fspath(dirpath) if dirpath is not None else "checkpoints"
        self.filename, self.monitor, self.mode = filename, monitor, mode
        self.verbose, self.save_last = bool(verbose), bool(save_last)
        self.save_weights_only, self.auto_insert_metric_name = bool(save_weights_only), bool(auto_insert_metric_name)
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.last_model_path = ""
        self._trainer = None
        self._latest = ""

    # --- the file names -----------------------------------------------------------------------
    def _template(self) -> str:
        t = self.filename if self.filename is not None else "{epoch}-{step}"
        if self.auto_insert_metric_name:
            # "{val_loss:.2f}" -> "val_loss={val_loss:.2f}", as Lightning names its files.
            out = []
            for literal, field, spec, conv in string.Formatter().parse(t):
                out.append(literal.replace("{", "{{").replace("}", "}}"))
                if field is not None:
                    inner = field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
                    out.append(f"{field}={{{inner}}}")
            t = "".join(out)
        return t

    def _fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self._template()) if f is not None]

    def format_checkpoint_name(self, metrics: dict) -> str:
        """The path of the file for ``metrics`` (an epoch's record plus ``step``)."""
        name = self._template().format(**metrics)
        if not name.endswith((".pth", ".pt")):
            name += self.FILE_EXTENSION
        return os.path.join(self.dirpath, name)

    def on_fit_start(self, trainer, keys: tuple) -> None:
        if self.monitor is not None:
            _check_monitor("ModelCheckpoint", self.monitor, keys)
        for f in self._fields():
            if f not in keys + _EXTRA_FIELDS:
                raise ValueError(
                    f"ModelCheckpoint(filename={self.filename!r}): {{{f}}} is not a field this fit records; "
                    f"use: {', '.join(keys + _EXTRA_FIELDS)}"
                )
        self._trainer = trainer
        if getattr(trainer, "is_main", True):
            os.makedirs(self.dirpath, exist_ok=True)

    # --- an epoch's end -------------------------------------------------------------------------
    def __call__(self, info: dict) -> bool | None:
        if info.get("phase") != "epoch":
            return None
        tr = self._trainer
        if tr is None:
            raise RuntimeError("ModelCheckpoint: pass it to Trainer.fit(callbacks=[...]), which binds it to the model")
        epoch = int(info["epoch"])
        if epoch % self.every_n_epochs != 0:
            return None
        metrics = {k: v for k, v in info.items() if k != "phase"}
        metrics["step"] = tr.global_step
        main = bool(getattr(tr, "is_main", True))
        if self.save_top_k != 0:
            path = self.format_checkpoint_name(metrics)
            if self.monitor is None:
                self._save(tr, path, main)
                if self.save_top_k == 1 and self._latest and self._latest != path:
                    self._remove(self._latest, main)
                self._latest = self.best_model_path = path
                if self.save_top_k == 1:
                    self.best_k_models = {path: math.nan}
                else:
                    self.best_k_models[path] = math.nan
            else:
                self._rank(tr, path, float(info[self.monitor]), main)
        if self.save_last:
            self.last_model_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            self._save(tr, self.last_model_path, main)
        return None

    def _rank(self, tr, path: str, score: float, main: bool) -> None:
        if math.isnan(score):
            score = math.inf if self.mode == "min" else -math.inf  # NaN ranks last
        key = (lambda p: self.best_k_models[p]) if self.mode == "min" else (lambda p: -self.best_k_models[p])
        full = self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k
        if full:
            worst = max(self.best_k_models, key=key)
            if not (score < self.best_k_models[worst] if self.mode == "min" else score > self.best_k_models[worst]):
                return
        self._save(tr, path, main)
        if full and worst != path:
            del self.best_k_models[worst]
            self._remove(worst, main)
        self.best_k_models[path] = score
        self.best_model_path = min(self.best_k_models, key=key)
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose and main:
            print(f"ModelCheckpoint: {self.monitor} = {score:.6g}, saved {path}")

    def _save(self, tr, path: str, main: bool) -> None:
        if not main:
            return
        if self.save_weights_only:
            sd = {k: v.detach().cpu() for k, v in tr.model.state_dict().items()}
            atomic_write(path, lambda tmp: torch.save(sd, tmp))
        else:
            tr.save(path)

    def _remove(self, path: str, main: bool) -> None:
        if main and path != self.last_model_path:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    def __repr__(self) -> str:
        return (
            f"ModelCheckpoint(dirpath={self.dirpath!r}, monitor={self.monitor!r}, mode={self.mode!r}, "
            f"save_top_k={self.save_top_k})"
        )
