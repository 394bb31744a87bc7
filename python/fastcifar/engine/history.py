"""What a fit and an evaluation report: ``History`` (one record per epoch) and ``EvalReport``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import overload

import numpy as np

from .._files import atomic_write

__all__ = ["History", "EvalReport"]


class History:
    """Per-epoch records of a fit: ``history["loss"]``, ``history["val_accuracy"]``, ... are lists
    (as Keras' ``History.history``); ``history.epochs`` holds one dict per epoch."""

    def __init__(self, epochs: list[dict] | None = None, interrupted: dict | None = None):
        self.epochs: list[dict] = list(epochs or [])
        #: The record of an epoch stopped part way (Ctrl-C, a callback), until that epoch runs again.
        self.interrupted: dict | None = interrupted

    def append(self, record: dict) -> None:
        self.epochs.append(dict(record))
        self.interrupted = None

    @property
    def history(self) -> dict[str, list]:
        keys = []
        for r in self.epochs:
            keys += [k for k in r if k not in keys]
        return {k: [r.get(k) for r in self.epochs] for k in keys}

    @overload
    def __getitem__(self, key: str) -> list: ...
    @overload
    def __getitem__(self, key: int) -> dict: ...
    @overload
    def __getitem__(self, key: slice) -> list[dict]: ...
    def __getitem__(self, key):
        """``history["loss"]``: that value for every epoch (None where an epoch lacks it);
        ``history[-1]``, ``history[1:3]``: the epochs' records, as a list indexes."""
        if isinstance(key, (int, slice)) and not isinstance(key, bool):
            return self.epochs[key]
        if not isinstance(key, str):
            raise TypeError(f"History indices must be str (a metric), int or slice, not {type(key).__name__}")
        if self.epochs and not any(key in r for r in self.epochs):
            raise KeyError(f"{key!r}: no epoch recorded it (recorded: {', '.join(self.history)})")
        return [r.get(key) for r in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)

    def __iter__(self):
        return iter(self.epochs)

    def to_dict(self) -> dict:
        return {"epochs": [dict(r) for r in self.epochs], "interrupted": self.interrupted}

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
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()}
        return f"History({len(self)} epochs, last={shown})"


@dataclass
class EvalReport:
    """Evaluation results. ``per_class`` maps class names to accuracy; ``confusion_matrix[i, j]``
    counts images of class i predicted as j."""

    loss: float
    accuracy: float
    count: int
    classes: list[str]
    confusion_matrix: np.ndarray
    per_class: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"Overall Accuracy: {100 * self.accuracy:.2f}%  (loss {self.loss:.4f}, {self.count} images)",
            "",
            "Per-class accuracy:",
        ]
        w = max(len(c) for c in self.classes)
        for c in self.classes:
            lines.append(f"  {c:<{w}}  {100 * self.per_class[c]:6.2f}%")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "count": self.count,
            "classes": list(self.classes),
            "per_class": dict(self.per_class),
            "confusion_matrix": self.confusion_matrix.tolist(),
        }
