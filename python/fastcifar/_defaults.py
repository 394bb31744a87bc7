"""The default of every setting the Rust core checks, read once from its ``impl Default``s.

Python signatures take their defaults from here (``lr: float = SGD["lr"]``), so ``help()`` and
``inspect.signature`` show the value the core would take, and each default is written once, in
Rust (``src/train``; exported by ``_native.defaults()``). Settings that torch requires (a
schedule's ``step_size``, ``max_lr``, ...) have no entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from . import _native

_ALL = {k: MappingProxyType(dict(v)) for k, v in _native.defaults().items()}


def of(constructor: str) -> Mapping[str, Any]:
    """The defaults of ``constructor`` ("SGD", "OneCycleLR", "Trainer", ...), read-only."""
    return _ALL[constructor]


SGD = of("SGD")
ADAM = of("Adam")
ADAMW = of("AdamW")
STEP_LR = of("StepLR")
COSINE = of("CosineAnnealingLR")
ONE_CYCLE = of("OneCycleLR")
PLATEAU = of("ReduceLROnPlateau")
LOOKAHEAD = of("Lookahead")
TRAINER = of("Trainer")
