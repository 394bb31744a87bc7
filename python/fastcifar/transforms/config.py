"""What evaluation repeats of a transform (``deterministic_part``) and its JSON form for checkpoints
(``to_config`` / ``from_config``), over the one registry of saved classes (``base._SAVED``)."""

from __future__ import annotations

from typing import Any

from .base import _SAVED, Compose, Transform
from .plan import flatten
from .tensor import ToTensor

# torchvision's random transforms that have no fastcifar twin (they stay torchvision objects), besides
# those named Random*.
_TORCHVISION_RANDOM = frozenset(
    {
        "ColorJitter",
        "AutoAugment",
        "RandAugment",
        "TrivialAugmentWide",
        "AugMix",
        "GaussianBlur",
        "GaussianNoise",
        "ElasticTransform",
        "ScaleJitter",
        "JPEG",
        "MixUp",
        "CutMix",
    }
)
# A step that a checkpoint could not keep (a function of the user's, a torchvision object without a twin).
_UNSAVED = "unsaved"


def _is_random(step) -> bool:
    if isinstance(step, Transform):
        return step._random
    name = type(step).__name__
    return name.startswith("Random") or name in _TORCHVISION_RANDOM


def deterministic_part(transform) -> Transform:
    """What evaluation repeats of ``transform``: every step except the random ones (augmentation),
    in order; ToTensor alone if nothing is left. Steps that run in Python (a torchvision object
    without a fused twin, a Lambda) are kept, so ``predict`` gives what ``evaluate`` gives."""
    steps = [t for t in flatten(transform) if not _is_random(t)]
    return Compose(steps) if steps else ToTensor()


def to_config(transform) -> list:
    """A JSON-able description of a deterministic transform (for checkpoints). A step that cannot
    be described is recorded by its repr, and ``from_config`` rebuilds it as a step that refuses
    to run, naming it (never silently left out)."""
    out: list[dict[str, Any]] = []
    for t in flatten(transform):
        cfg = t._config() if _SAVED.get(type(t).__name__) is type(t) else None
        out.append({"type": type(t).__name__, **cfg} if cfg is not None else {"type": _UNSAVED, "repr": repr(t)})
    return out


class _Unsaved(Transform):
    """Stands, in a loaded trainer's eval transform, for a step its checkpoint could not keep."""

    def __init__(self, what: str):
        self.what = what

    def _python(self, img):
        raise ValueError(
            f"the checkpoint's eval transform has a step that a checkpoint cannot keep ({self.what}); "
            "pass it again: predict(images, transform=...), or set trainer.eval_transform"
        )

    _float = _python


def from_config(cfg: list) -> Transform:
    steps: list[Transform] = []
    for c in cfg:
        c = dict(c)
        kind = c.pop("type")
        if kind == _UNSAVED:
            steps.append(_Unsaved(c.get("repr", "?")))
        elif kind in _SAVED:
            steps.append(_SAVED[kind]._from_config(c))
        else:
            raise ValueError(f"eval_transform: unknown step {kind!r} in the checkpoint")
    return Compose(steps)
