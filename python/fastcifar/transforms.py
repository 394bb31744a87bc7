"""torchvision-style transforms that fastcifar fuses into one Rust pass per batch.

The names, arguments and semantics follow ``torchvision.transforms``. A ``Compose`` of these is
not run step by step: the loader compiles it once (crops, pads and flips become index maps, ToTensor
and Normalize one per-channel affine, erasing a rectangle fill) and writes each batch straight into
the output tensor's memory from the uint8 images, on all cores.

Order rules of the fused pass: geometric transforms (crops, flips, Resize) come before
``ToTensor``; ``Normalize``, ``RandomErasing`` and ``Cutout`` come after it.

Each transform is also callable on one image (HWC uint8 numpy, CHW uint8 tensor or PIL image),
and ``ToTensor`` / ``Normalize`` on tensors of any device, e.g. to normalise uint8 batches on the GPU.
"""
from __future__ import annotations

import numbers
from typing import List, Sequence

import numpy as np
import torch

from . import _native as _rs

__all__ = [
    "Transform", "Compose", "RandomCrop", "CenterCrop", "RandomHorizontalFlip", "RandomVerticalFlip", "AlternatingHorizontalFlip",
    "Resize", "ToTensor", "Normalize", "RandomErasing", "Cutout",
]


def _pair(name: str, v) -> tuple:
    if isinstance(v, numbers.Integral):
        return (int(v), int(v))
    if isinstance(v, Sequence) and len(v) == 1:
        return (int(v[0]), int(v[0]))
    if isinstance(v, Sequence) and len(v) == 2:
        return (int(v[0]), int(v[1]))
    raise ValueError(f"{name}: expected an int or an (h, w) pair, got {v!r}")


def _nonneg_size(name: str, v) -> tuple:
    h, w = _pair(name, v)
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: ({h}, {w}) must be positive")
    return h, w


def _floats(name: str, v) -> List[float]:
    if isinstance(v, numbers.Real):
        return [float(v)]
    try:
        return [float(x) for x in v]
    except TypeError:
        raise ValueError(f"{name}: expected a number or a sequence of numbers, got {v!r}") from None


class Transform:
    """Base class: a transform knows the native ops it compiles to."""

    def _ops(self) -> list:
        raise NotImplementedError

    def _apply_native(self, native_ds, index: int, seed: int | None = None) -> torch.Tensor:
        """This transform applied to image ``index`` of a native data set, with fresh randomness."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        ops = self._ops()
        out_float = any(o.name == "ToTensor" for o in ops)
        loader = _rs.NativeLoader(native_ds, ops, 1, False, False, seed, 1, "float32" if out_float else "uint8", "cpu", False, 1)
        x, _ = loader.batch([index], 0)
        return x[0]

    def __call__(self, img):
        """Applies the transform to one image: HWC uint8 numpy, CHW uint8 tensor, or PIL image."""
        if isinstance(img, torch.Tensor):
            if img.dtype != torch.uint8 or img.dim() not in (2, 3):
                raise TypeError(f"expected a uint8 (C, H, W) tensor, got {img.dtype} of shape {tuple(img.shape)}")
            arr = img.cpu().numpy()
            arr = arr[None] if arr.ndim == 2 else arr
            arr = arr.transpose(1, 2, 0)
        else:
            arr = np.asarray(img)
            if arr.dtype != np.uint8:
                raise TypeError(f"expected a uint8 image, got dtype {arr.dtype}")
            if arr.ndim == 2:
                arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
            raise ValueError(f"expected an (H, W, C) image with C 1 or 3, got shape {arr.shape}")
        native = _rs.NativeDataset.from_numpy(np.ascontiguousarray(arr[None]), [0], ["_"])
        return self._apply_native(native, 0)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Chains transforms; the loader fuses the whole chain into one pass."""

    def __init__(self, transforms: Sequence[Transform]):
        transforms = list(transforms)
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(
                    f"Compose: {t!r} is not a fastcifar transform; fastcifar fuses transforms in Rust, "
                    f"so use the fastcifar.transforms equivalent"
                )
        self.transforms = transforms

    def _ops(self) -> list:
        return [op for t in self.transforms for op in t._ops()]

    def __call__(self, img):
        # A batch tensor on any device through tensor-capable steps (ToTensor, Normalize): GPU-side normalising.
        if isinstance(img, torch.Tensor) and img.dim() == 4 and all(hasattr(t, "apply_tensor") for t in self.transforms):
            for t in self.transforms:
                img = t.apply_tensor(img)
            return img
        return super().__call__(img)

    def __repr__(self) -> str:
        body = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"Compose({body}\n)"


class RandomCrop(Transform):
    """Pads (``padding``: int, (lr, tb) or (l, t, r, b)) then crops ``size`` at a uniform offset."""

    def __init__(self, size, padding=None, pad_if_needed: bool = False, fill=0, padding_mode: str = "constant"):
        self.size = _nonneg_size("size", size)
        if padding is None:
            pad = [0, 0, 0, 0]
        elif isinstance(padding, numbers.Integral):
            pad = [int(padding)] * 4
        elif isinstance(padding, Sequence) and len(padding) == 2:
            pad = [int(padding[0]), int(padding[1])] * 2
        elif isinstance(padding, Sequence) and len(padding) == 4:
            pad = [int(p) for p in padding]
        else:
            raise ValueError(f"padding: expected an int or a sequence of 2 or 4 ints, got {padding!r}")
        if any(p < 0 for p in pad):
            raise ValueError(f"padding: {padding!r} must not be negative")
        fills = _floats("fill", fill)
        if any(not (0 <= f <= 255) or f != int(f) for f in fills):
            raise ValueError(f"fill: {fill!r} must be pixel values, integers in [0, 255]")
        self.padding, self.pad_if_needed, self.fill, self.padding_mode = padding, pad_if_needed, fill, padding_mode
        self._op = _rs.TransformOp.random_crop(self.size, pad, [int(f) for f in fills], padding_mode, bool(pad_if_needed))

    def _ops(self):
        return [self._op]


class CenterCrop(Transform):
    def __init__(self, size):
        self.size = _nonneg_size("size", size)
        self._op = _rs.TransformOp.center_crop(self.size)

    def _ops(self):
        return [self._op]


class RandomHorizontalFlip(Transform):
    def __init__(self, p: float = 0.5):
        self.p = p
        self._op = _rs.TransformOp.horizontal_flip(float(p))

    def _ops(self):
        return [self._op]


class AlternatingHorizontalFlip(Transform):
    """airbench's alternating flip: each image has one fair coin for the whole run (from the
    loader's seed and its index) and is mirrored when the coin and the epoch's parity disagree,
    so it is seen mirrored in exactly one of any two consecutive epochs (half the images each
    epoch, as with RandomHorizontalFlip, but never the same view twice in a row)."""

    def __init__(self):
        self._op = _rs.TransformOp.alternating_horizontal_flip()

    def _ops(self):
        return [self._op]


class RandomVerticalFlip(Transform):
    def __init__(self, p: float = 0.5):
        self.p = p
        self._op = _rs.TransformOp.vertical_flip(float(p))

    def _ops(self):
        return [self._op]


class Resize(Transform):
    """Bilinear resize (antialiased when shrinking, like PIL). An int resizes the shorter side."""

    def __init__(self, size):
        self.size = size
        if isinstance(size, numbers.Integral):
            self._op = _rs.TransformOp.resize(shorter=int(size))
        else:
            self._op = _rs.TransformOp.resize(exact=_pair("size", size))

    def _ops(self):
        return [self._op]


class ToTensor(Transform):
    """uint8 [0, 255] to float32 [0, 1], CHW."""

    def _ops(self):
        return [_rs.TransformOp.to_tensor()]

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"ToTensor expects uint8, got {x.dtype}")
        return x.float().div_(255.0)


class Normalize(Transform):
    """(x - mean) / std per channel, after ToTensor."""

    def __init__(self, mean, std, inplace: bool = False):
        self.mean, self.std = tuple(_floats("mean", mean)), tuple(_floats("std", std))
        self.inplace = inplace
        self._op = _rs.TransformOp.normalize(list(self.mean), list(self.std))

    def _ops(self):
        return [self._op]

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"Normalize expects a float tensor, got {x.dtype}; apply ToTensor first")
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return x.sub_(mean).div_(std) if self.inplace else (x - mean) / std


class RandomErasing(Transform):
    """torchvision's RandomErasing (after ToTensor); ``value`` in the units at its position."""

    def __init__(self, p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0, inplace: bool = False):
        if isinstance(value, str):
            raise ValueError(f"value: '{value}' is not supported; give a number or one per channel")
        self.p, self.scale, self.ratio, self.value, self.inplace = p, tuple(scale), tuple(ratio), value, inplace
        self._op = _rs.TransformOp.random_erasing(float(p), tuple(map(float, scale)), tuple(map(float, ratio)), _floats("value", value))

    def _ops(self):
        return [self._op]


class Cutout(Transform):
    """A ``size`` x ``size`` square centred on a uniform pixel (clipped at the border) set to ``value``."""

    def __init__(self, size: int, p: float = 1.0, value=0):
        self.size, self.p, self.value = size, p, value
        self._op = _rs.TransformOp.cutout(int(size), float(p), _floats("value", value))

    def _ops(self):
        return [self._op]


def ops_of(transform, dtype: str) -> list:
    """The native ops of a transform; without one, float output means ToTensor."""
    if transform is None:
        return [_rs.TransformOp.to_tensor()] if dtype == "float32" else []
    if not isinstance(transform, Transform):
        raise TypeError(
            f"transform: {transform!r} is not a fastcifar transform; use fastcifar.transforms "
            f"(they run fused in Rust), or iterate the data set yourself"
        )
    return transform._ops()


_DETERMINISTIC = (ToTensor, Normalize, Resize, CenterCrop)


def _flatten(t) -> list:
    if t is None:
        return []
    return [x for s in t.transforms for x in _flatten(s)] if isinstance(t, Compose) else [t]


def deterministic_part(transform) -> Transform:
    """The steps of ``transform`` that evaluation should repeat (ToTensor, Normalize, Resize,
    CenterCrop), dropping random augmentation; ToTensor alone if there is none."""
    steps = [t for t in _flatten(transform) if isinstance(t, _DETERMINISTIC)]
    return Compose(steps) if steps else ToTensor()


def to_config(transform) -> list:
    """A JSON-able description of a deterministic transform (for checkpoints)."""
    out = []
    for t in _flatten(transform):
        if isinstance(t, ToTensor):
            out.append({"type": "ToTensor"})
        elif isinstance(t, Normalize):
            out.append({"type": "Normalize", "mean": list(t.mean), "std": list(t.std)})
        elif isinstance(t, Resize):
            out.append({"type": "Resize", "size": t.size})
        elif isinstance(t, CenterCrop):
            out.append({"type": "CenterCrop", "size": list(t.size)})
    return out


def from_config(cfg: list) -> Transform:
    kinds = {"ToTensor": lambda c: ToTensor(), "Normalize": lambda c: Normalize(c["mean"], c["std"]),
             "Resize": lambda c: Resize(c["size"]), "CenterCrop": lambda c: CenterCrop(c["size"])}
    return Compose([kinds[c["type"]](c) for c in cfg])
