"""The base of every transform: ``Transform``, ``Compose``, the registry of the classes that a
checkpoint can rebuild (``@saved``), and the argument and image-kind helpers the kinds share."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Callable

import numpy as np
import torch


def _pair(name: str, v) -> tuple:
    if isinstance(v, numbers.Integral):
        return (int(v), int(v))
    if isinstance(v, Sequence) and len(v) == 1:
        return (int(v[0]), int(v[0]))
    if isinstance(v, Sequence) and len(v) == 2:
        return (int(v[0]), int(v[1]))
    raise ValueError(f"{name}: expected an int or an (h, w) pair, got {v!r}")


def _floats(name: str, v) -> list[float]:
    if isinstance(v, numbers.Real):
        return [float(v)]
    try:
        return [float(x) for x in v]
    except TypeError:
        raise ValueError(f"{name}: expected a number or a sequence of numbers, got {v!r}") from None


def _ltrb(padding) -> list[int]:
    """torchvision's padding argument (int, (lr, tb) or (l, t, r, b)) as [left, top, right, bottom]."""
    if padding is None:
        pad = [0, 0, 0, 0]
    elif isinstance(padding, numbers.Integral):
        pad = [int(padding)] * 4
    elif isinstance(padding, Sequence) and len(padding) == 1:
        pad = [int(padding[0])] * 4
    elif isinstance(padding, Sequence) and len(padding) == 2:
        pad = [int(padding[0]), int(padding[1])] * 2
    elif isinstance(padding, Sequence) and len(padding) == 4:
        pad = [int(p) for p in padding]
    else:
        raise ValueError(f"padding: expected an int or a sequence of 1, 2 or 4 ints, got {padding!r}")
    return pad


def _fill(fill) -> list[float]:
    """torchvision's fill (None, a number or one per channel) as numbers; the core checks that they
    are pixel values."""
    return _floats("fill", 0 if fill is None else fill)


def _dtype(v) -> torch.dtype:
    """A torch dtype, from a dtype or its name as checkpoints keep it ("float32")."""
    if isinstance(v, str) and isinstance(getattr(torch, v.removeprefix("torch."), None), torch.dtype):
        return getattr(torch, v.removeprefix("torch."))
    return v


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _interp_name(interpolation) -> str:
    """'bilinear', 'nearest', ... from torchvision's InterpolationMode, a string or a PIL constant."""
    v = getattr(interpolation, "value", interpolation)
    if isinstance(v, str):
        return v.lower()
    return {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "lanczos", 4: "box", 5: "hamming"}.get(int(v), str(v))


# --- image kinds: what a torchvision transform receives --------------------------------------------


def _is_pil(img) -> bool:
    return type(img).__module__.startswith("PIL.") and hasattr(img, "getbands")


def _pil_module():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("PIL images need Pillow: pip install pillow") from e
    return Image


def to_pil(chw: torch.Tensor):
    """A (C, H, W) uint8 tensor as a PIL image (mode L or RGB), as torchvision's data sets give."""
    return pil_from_hwc(chw.detach().cpu().numpy().transpose(1, 2, 0))


def pil_from_hwc(hwc: np.ndarray):
    """An (H, W, C) uint8 array as a PIL image (mode L or RGB)."""
    return _pil_module().fromarray(np.ascontiguousarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc))


def _hwc_array(img):
    """(HWC uint8 array, kind) for a PIL image, HWC uint8 numpy array or CHW uint8 tensor."""
    if isinstance(img, torch.Tensor):
        if img.dtype != torch.uint8 or img.dim() not in (2, 3):
            raise TypeError(f"expected a uint8 (C, H, W) tensor, got {img.dtype} of shape {tuple(img.shape)}")
        arr = img.detach().cpu().numpy()
        arr = arr[None] if arr.ndim == 2 else arr
        return arr.transpose(1, 2, 0), "tensor"
    kind = "pil" if _is_pil(img) else "numpy"
    if kind == "pil" and img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W, C) image with C 1 or 3, got shape {arr.shape}")
    return arr, kind


_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


def _python_round(v: float) -> int:
    return int(round(v))  # halves to even, as torchvision (Python) rounds


class _NotNative(Exception):
    """This step has no fused op (with these arguments); it runs in Python."""


class Transform:
    """Base class: a transform knows the native ops it compiles to.

    ``_takes`` are the image kinds the fused pass can give this step: "pil" (a uint8 image as a data
    set hands it out), "uint8" (a uint8 tensor, after ToImage / PILToTensor) or "float" (after
    ToTensor); ``_gives`` the kind it leaves (None: unchanged).
    """

    _takes = ("pil",)
    _gives: str | None = None
    #: Whether the step draws randomness: evaluation leaves it out (``deterministic_part``).
    _random = False

    def _config(self) -> dict | None:
        """The JSON-able constructor keywords that rebuild this step from a checkpoint (classes in
        ``_SAVED``), or None where it cannot be saved (a function of the user's, say)."""
        return None

    @classmethod
    def _from_config(cls, cfg: dict) -> Transform:
        return cls(**cfg)

    def _ops(self) -> list:
        raise _NotNative(type(self).__name__)

    def __call__(self, img):
        """Applies the transform to one image, as torchvision's twin does (see the module notes)."""
        if isinstance(img, torch.Tensor) and img.is_floating_point():
            return self._float(img)
        try:
            ops = self._ops()
        except _NotNative:
            return self._python(img)
        from .plan import run_on_image

        out, kind = run_on_image(img, ops)
        return to_pil(out) if kind == "pil" and out.dtype == torch.uint8 else out

    def _float(self, x: torch.Tensor):
        raise TypeError(f"{type(self).__name__}: expected a PIL image or a uint8 image, got a {x.dtype} tensor")

    def _python(self, img):
        raise NotImplementedError  # only for transforms whose _ops can refuse

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Chains transforms; the loader fuses the chain into one pass. Steps may be fastcifar
    transforms, torchvision transforms or any callable (see the module notes)."""

    def __init__(self, transforms: Sequence[Callable]):
        transforms = list(transforms)
        for t in transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not a transform (not callable)")
        self.transforms = transforms

    def _ops(self) -> list:
        from .plan import Plan  # plan.py builds on every transform class

        plan = Plan(self)
        if plan.rest:
            raise _NotNative(plan.rest[0])
        return plan.ops

    def __call__(self, img):
        from .plan import Plan, flatten

        # A batch tensor on any device through tensor-capable steps (ToTensor, Normalize): GPU-side normalising.
        steps = flatten(self)
        if isinstance(img, torch.Tensor) and img.dim() == 4 and all(hasattr(t, "apply_tensor") for t in steps):
            for t in steps:
                img = t.apply_tensor(img)
            return img
        if isinstance(img, torch.Tensor) and img.is_floating_point():
            for t in steps:
                img = t(img)
            return img
        return Plan(self).run_one(img)

    def __repr__(self) -> str:
        body = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"Compose({body}\n)"


# --- the classes a checkpoint can rebuild --------------------------------------------------------

#: The steps a checkpoint can rebuild, by class name: each one's ``_config()`` gives its constructor
#: keywords. ``@saved`` adds a class; this one registry serves ``to_config`` and ``from_config``
#: (config.py), and ``Transform._random`` says what evaluation leaves out.
_SAVED: dict[str, type[Transform]] = {}


def saved(cls: type[Transform]) -> type[Transform]:
    """Class decorator: checkpoints keep this step (through its ``_config``) and rebuild it."""
    _SAVED[cls.__name__] = cls
    return cls
