"""Tensor transforms: uint8 to float (ToTensor, ToImage + ToDtype, ConvertImageDtype), Normalize
and the erasing steps (RandomErasing, Cutout), fused as torchvision's own float32 arithmetic."""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch

from .. import _native as _rs
from .base import Transform, _dtype, _dtype_name, _floats, _hwc_array, _NotNative, _python_round, saved


@saved
class ToTensor(Transform):
    """uint8 [0, 255] to float32 [0, 1], CHW: ``x / 255`` as torchvision computes it (bit-identical)."""

    _gives = "float"

    def _config(self):
        return {}

    def _ops(self):
        return [_rs.TransformOp.to_tensor()]

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"ToTensor expects uint8, got {x.dtype}")
        return x.float().div_(255.0)

    def _float(self, x):
        raise TypeError(
            f"ToTensor: expected a PIL image, a uint8 numpy array or a uint8 tensor, got a {x.dtype} tensor"
        )


@saved
class PILToTensor(Transform):
    """A PIL image (or HWC uint8 array) as a CHW uint8 tensor, values unchanged."""

    _gives = "uint8"

    def _config(self):
        return {}

    def _ops(self):
        return []

    def __call__(self, img):
        if isinstance(img, torch.Tensor):
            return img
        arr, _ = _hwc_array(img)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@saved
class ToImage(PILToTensor):
    """transforms.v2's ToImage: a PIL image as a CHW uint8 tensor."""


@saved
class ToDtype(Transform):
    """transforms.v2's ToDtype for images: with ``scale=True``, uint8 to float32 is ``x * (1 / 255)``
    as v2 computes it (fused after ToImage)."""

    _takes = ("uint8",)
    _gives = "float"

    def __init__(self, dtype=torch.float32, scale: bool = False):
        self.dtype, self.scale = _dtype(dtype), scale

    def _config(self):
        return {"dtype": _dtype_name(self.dtype), "scale": self.scale}

    def _ops(self):
        if self.dtype != torch.float32 or not self.scale:
            raise _NotNative("ToDtype")
        return [_rs.TransformOp.to_dtype_scaled()]

    def __call__(self, img):
        if not isinstance(img, torch.Tensor):
            return img  # v2 passes PIL images through ToDtype
        if not self.scale or img.is_floating_point() == self.dtype.is_floating_point:
            return img.to(self.dtype)
        if img.dtype == torch.uint8 and self.dtype.is_floating_point:
            return img.to(self.dtype).mul_(1.0 / 255)
        raise TypeError(f"ToDtype: scaling {img.dtype} to {self.dtype} is not supported here")


@saved
class ConvertImageDtype(ToDtype):
    """torchvision.transforms' ConvertImageDtype: uint8 to float is ``x / 255`` (as ToTensor)."""

    def __init__(self, dtype=torch.float32):
        super().__init__(dtype, scale=True)

    def _config(self):
        return {"dtype": _dtype_name(self.dtype)}

    def _ops(self):
        if self.dtype != torch.float32:
            raise _NotNative("ConvertImageDtype")
        return [_rs.TransformOp.to_tensor()]

    def __call__(self, img):
        if isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and self.dtype.is_floating_point:
            return img.to(self.dtype) / 255.0
        return super().__call__(img)


@saved
class Normalize(Transform):
    """(x - mean) / std per channel, after ToTensor; on float (C, H, W) and (N, C, H, W) tensors."""

    _takes = ("float",)

    def __init__(self, mean, std, inplace: bool = False):
        self.mean, self.std = tuple(_floats("mean", mean)), tuple(_floats("std", std))
        self.inplace = inplace
        self._op = _rs.TransformOp.normalize(mean=list(self.mean), std=list(self.std))

    def _config(self):
        return {"mean": list(self.mean), "std": list(self.std), "inplace": self.inplace}

    def _ops(self):
        return [self._op]

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"Normalize expects a float tensor, got {x.dtype}; apply ToTensor first")
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return x.sub_(mean).div_(std) if self.inplace else (x - mean).div_(std)

    def __call__(self, img):
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"Normalize expects a float tensor, got {type(img).__name__}; apply ToTensor first")
        return self.apply_tensor(img)


def _erase_value(value, c: int, h: int, w: int, dtype) -> torch.Tensor:
    if value is None or value == "random":
        return torch.empty((c, h, w), dtype=dtype).normal_()
    v = torch.tensor(_floats("value", value), dtype=dtype)
    return v.view(-1, 1, 1).expand(c, h, w) if v.numel() in (1, c) else v


class RandomErasing(Transform):
    """torchvision's RandomErasing (after ToTensor); ``value`` in the units at its position, or
    ``'random'`` (normal noise per pixel, which runs in Python)."""

    _random = True

    _takes = ("float",)

    def __init__(self, p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0, inplace: bool = False):
        self.p, self.scale, self.ratio, self.value, self.inplace = p, tuple(scale), tuple(ratio), value, inplace
        self._random = value is None or (isinstance(value, str) and value == "random")
        if isinstance(value, str) and not self._random:
            raise ValueError(f"value: '{value}' is not 'random', a number or one number per channel")
        # Made even for value='random' (which runs in Python), so that the core checks p, scale and ratio.
        op = _rs.TransformOp.random_erasing(
            p=float(p),
            # Any length goes to the core, which checks that each is a pair (and names the one that is not).
            scale=cast("tuple[float, float]", tuple(map(float, scale))),
            ratio=cast("tuple[float, float]", tuple(map(float, ratio))),
            value=[0.0] if self._random else _floats("value", value),
        )
        self._op = None if self._random else op

    def _ops(self):
        if self._random:
            raise _NotNative("RandomErasing")
        return [self._op]

    def __call__(self, img):
        if not isinstance(img, torch.Tensor) or not img.is_floating_point():
            raise TypeError(
                "RandomErasing expects a float tensor (after ToTensor), "
                f"got {getattr(img, 'dtype', type(img).__name__)}"
            )
        return self._float(img)

    def _float(self, x):
        if torch.rand(1).item() >= self.p:
            return x
        c, h, w = x.shape[-3:]
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            erase_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
            eh, ew = _python_round(math.sqrt(erase_area * aspect)), _python_round(math.sqrt(erase_area / aspect))
            if not (eh < h and ew < w):
                continue
            v = _erase_value(self.value, c, eh, ew, x.dtype)
            i = int(torch.randint(0, h - eh + 1, size=(1,)).item())
            j = int(torch.randint(0, w - ew + 1, size=(1,)).item())
            x = x if self.inplace else x.clone()
            x[..., i : i + eh, j : j + ew] = v.to(x.device)
            return x
        return x


class Cutout(Transform):
    """A ``size`` x ``size`` square centred on a uniform pixel (clipped at the border) set to ``value``."""

    _random = True

    _takes = ("float",)

    def __init__(self, size: int, p: float = 1.0, value=0):
        self.size, self.p, self.value = size, p, value
        self._op = _rs.TransformOp.cutout(size=int(size), p=float(p), value=_floats("value", value))

    def _ops(self):
        return [self._op]

    def _float(self, x):
        if torch.rand(1).item() >= self.p:
            return x
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(0, h, (1,)).item()), int(torch.randint(0, w, (1,)).item())
        y0, x0 = max(cy - self.size // 2, 0), max(cx - self.size // 2, 0)
        y1, x1 = min(cy - self.size // 2 + self.size, h), min(cx - self.size // 2 + self.size, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = torch.tensor(_floats("value", self.value), dtype=x.dtype).view(-1, 1, 1)
        return x
