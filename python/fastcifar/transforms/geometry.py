"""Geometric transforms, fused as row and column maps (crops, pads, flips) or Pillow's resize
weights (Resize, RandomResizedCrop); each also runs on a float tensor with torch ops."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .. import _native as _rs
from .base import (
    _PIL_FILTERS,
    Transform,
    _fill,
    _floats,
    _hwc_array,
    _interp_name,
    _is_pil,
    _ltrb,
    _NotNative,
    _pair,
    _python_round,
    saved,
    to_pil,
)


def _pad_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of each padded position along one axis; -1 where the constant fill goes."""
    q = np.arange(-before, n + after)
    if mode == "constant":
        return np.where((q >= 0) & (q < n), q, -1)
    if mode == "edge":
        return q.clip(0, n - 1)
    if mode == "reflect":
        period = 2 * max(n - 1, 1)
        r = np.mod(q, period)
        return np.where(r >= n, period - r, r).clip(0, n - 1)
    r = np.mod(q, 2 * n)  # symmetric
    return np.where(r >= n, 2 * n - 1 - r, r)


def _pad_float(x: torch.Tensor, pad: Sequence[int], fill, mode: str) -> torch.Tensor:
    """Pads the last two dims of a tensor by [left, top, right, bottom], numpy's modes."""
    h, w = x.shape[-2:]
    ys, xs = _pad_index(h, pad[1], pad[3], mode), _pad_index(w, pad[0], pad[2], mode)
    out = x[..., torch.from_numpy(ys.clip(0)), :][..., torch.from_numpy(xs.clip(0))]
    if mode == "constant" and (ys.min() < 0 or xs.min() < 0):
        out = out.clone()
        mask = torch.from_numpy((ys[:, None] < 0) | (xs[None, :] < 0))
        fills = _floats("fill", 0 if fill is None else fill)
        for ch in range(out.shape[-3]):
            out[..., ch, :, :][..., mask] = fills[ch % len(fills)]
    return out


class RandomCrop(Transform):
    """Pads (``padding``: int, (lr, tb) or (l, t, r, b)) then crops ``size`` at a uniform offset.
    ``padding_mode``: 'constant' (with ``fill``), 'edge', 'reflect' or 'symmetric'."""

    _random = True

    def __init__(self, size, padding=None, pad_if_needed: bool = False, fill=0, padding_mode: str = "constant"):
        # The native op is made at once: the core checks size, padding, fill and padding_mode here.
        self.size, self._pad = _pair("size", size), _ltrb(padding)
        self._op = _rs.TransformOp.random_crop(
            size=self.size,
            padding=self._pad,
            fill=_fill(fill),
            padding_mode=padding_mode,
            pad_if_needed=bool(pad_if_needed),
        )
        self.padding, self.pad_if_needed, self.fill, self.padding_mode = padding, pad_if_needed, fill, padding_mode

    def _ops(self):
        return [self._op]

    def _float(self, x):
        x = _pad_float(x, self._pad, self.fill, self.padding_mode)
        h, w = x.shape[-2:]
        th, tw = self.size
        if self.pad_if_needed and (h < th or w < tw):
            x = _pad_float(x, [max(tw - w, 0), max(th - h, 0)] * 2, self.fill, self.padding_mode)
            h, w = x.shape[-2:]
        if h < th or w < tw:
            raise ValueError(f"size: crop {th}x{tw} is larger than the padded image {h}x{w} (RandomCrop)")
        i = int(torch.randint(0, h - th + 1, size=(1,)).item())
        j = int(torch.randint(0, w - tw + 1, size=(1,)).item())
        return x[..., i : i + th, j : j + tw]


@saved
class CenterCrop(Transform):
    """The centre ``size`` window (offsets rounded half to even, as torchvision); zero-padded
    when larger than the image."""

    def __init__(self, size):
        self.size = _pair("size", size)
        self._op = _rs.TransformOp.center_crop(size=self.size)

    def _config(self):
        return {"size": list(self.size)}

    def _ops(self):
        return [self._op]

    def _float(self, x):
        h, w = x.shape[-2:]
        th, tw = self.size
        if th > h or tw > w:
            x = _pad_float(
                x,
                [max(tw - w, 0) // 2, max(th - h, 0) // 2, (max(tw - w, 0) + 1) // 2, (max(th - h, 0) + 1) // 2],
                0,
                "constant",
            )
            h, w = x.shape[-2:]
        i, j = _python_round((h - th) / 2.0), _python_round((w - tw) / 2.0)
        return x[..., i : i + th, j : j + tw]


@saved
class Pad(Transform):
    """Pads by ``padding`` (int, (lr, tb) or (l, t, r, b)) with ``fill`` or a ``padding_mode``."""

    def __init__(self, padding, fill=0, padding_mode: str = "constant"):
        self._pad = _ltrb(padding)
        self._op = _rs.TransformOp.pad(padding=self._pad, fill=_fill(fill), padding_mode=padding_mode)
        self.padding, self.fill, self.padding_mode = padding, fill, padding_mode

    def _config(self):
        return {"padding": list(self._pad), "fill": _fill(self.fill), "padding_mode": self.padding_mode}

    def _ops(self):
        return [self._op]

    def _float(self, x):
        return _pad_float(x, self._pad, self.fill, self.padding_mode)


class _Flip(Transform):
    _dim = -1
    _random = True

    def __init__(self, p: float = 0.5):
        self.p = p
        self._op = (_rs.TransformOp.horizontal_flip if self._dim == -1 else _rs.TransformOp.vertical_flip)(p=float(p))

    def _ops(self):
        return [self._op]

    def _float(self, x):
        return x.flip(self._dim) if torch.rand(1).item() < self.p else x


class RandomHorizontalFlip(_Flip):
    _dim = -1


class RandomVerticalFlip(_Flip):
    _dim = -2


class AlternatingHorizontalFlip(Transform):
    """airbench's alternating flip: each image has one fair coin for the whole run (drawn from the
    loader's seed and the image's index) and is mirrored when that coin and the epoch's parity
    disagree. So half the images are mirrored each epoch, as with RandomHorizontalFlip, but each
    image is seen mirrored in exactly one of any two consecutive epochs."""

    _random = True

    def __init__(self):
        self._op = _rs.TransformOp.alternating_horizontal_flip()

    def _ops(self):
        return [self._op]


def _resize_hw(size, h: int, w: int, max_size=None) -> tuple:
    """torchvision's output size: an int (or [int]) sets the shorter side, keeping the ratio."""
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[0]), int(size[1])
    s = int(size[0] if isinstance(size, Sequence) else size)
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = s, int(s * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if h <= w else (new_long, new_short)


def _resize_tensor(x: torch.Tensor, oh: int, ow: int, interpolation, antialias, v2: bool) -> torch.Tensor:
    """A (..., C, H, W) tensor resized as torchvision resizes tensors (not PIL images): with
    ``torch.nn.functional.interpolate``, uint8 cast to float32 and rounded back, except that
    transforms.v2 interpolates uint8 itself where torch has the kernel (nearest; bicubic and, on
    AVX2 CPUs, bilinear), which rounds differently."""
    if (oh, ow) == tuple(x.shape[-2:]):
        return x
    mode = _interp_name(interpolation)
    mode = mode if mode in ("nearest", "nearest-exact", "bilinear", "bicubic") else "bilinear"
    smooth = mode in ("bilinear", "bicubic")
    native = x.is_floating_point() or (
        v2
        and x.dtype == torch.uint8
        and (
            mode.startswith("nearest")
            or (
                x.device.type == "cpu"
                and (mode == "bicubic" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))
            )
        )
    )
    y = x.reshape(-1, *x.shape[-3:])
    y = y if native else y.to(torch.float32)
    kw = dict(align_corners=False, antialias=bool(antialias)) if smooth else {}
    y = torch.nn.functional.interpolate(y, size=(oh, ow), mode=mode, **kw)
    if not native:
        if mode == "bicubic" and x.dtype == torch.uint8:
            y = y.clamp_(0, 255)
        y = y.round_().to(x.dtype)
    return y.reshape(*x.shape[:-2], oh, ow)


@saved
class Resize(Transform):
    """Resize as torchvision does a PIL image: an int resizes the shorter side. Bilinear (the
    default) is fused and gives Pillow's pixels exactly; other interpolations and ``max_size``
    run through Pillow in Python. A tensor (a uint8 one after ToImage / PILToTensor, or a float
    one) is resized as torchvision resizes tensors, with torch's interpolate (``antialias`` applies
    there): as ``torchvision.transforms`` does, or as ``transforms.v2`` does for v2's twin."""

    # Set on the twin of a transforms.v2 object: v2 resizes uint8 tensors without a float round trip.
    _v2 = False

    def __init__(self, size, interpolation="bilinear", max_size=None, antialias=True):
        self.size, self.interpolation, self.max_size, self.antialias = size, interpolation, max_size, antialias
        if isinstance(size, numbers.Integral) or (isinstance(size, Sequence) and len(size) == 1):
            s = int(size if isinstance(size, numbers.Integral) else size[0])
            self._op = _rs.TransformOp.resize(shorter=s)
        else:
            self._op = _rs.TransformOp.resize(exact=_pair("size", size))
        self._native = _interp_name(interpolation) == "bilinear" and max_size is None

    def _config(self):
        size = self.size if isinstance(self.size, numbers.Integral) else list(self.size)
        return {
            "size": size,
            "interpolation": _interp_name(self.interpolation),
            "max_size": self.max_size,
            "antialias": self.antialias,
            "v2": self._v2,
        }

    @classmethod
    def _from_config(cls, cfg: dict) -> Transform:
        cfg = dict(cfg)
        v2 = cfg.pop("v2", False)
        t = cls(**cfg)
        t._v2 = v2
        return t

    def _ops(self):
        if not self._native:
            raise _NotNative("Resize")
        return [self._op]

    def _python(self, img):
        kind = "pil" if _is_pil(img) else "tensor"
        pil = img if kind == "pil" else to_pil(torch.as_tensor(_hwc_array(img)[0]).permute(2, 0, 1))
        h, w = pil.height, pil.width
        oh, ow = _resize_hw(self.size, h, w, self.max_size)
        out = pil.resize((ow, oh), _PIL_FILTERS.get(_interp_name(self.interpolation), 2))
        return out if kind == "pil" else torch.from_numpy(np.array(out)).reshape(oh, ow, -1).permute(2, 0, 1)

    def __call__(self, img):
        if isinstance(img, torch.Tensor):
            return self._float(img)
        return super().__call__(img)

    def _float(self, x):
        oh, ow = _resize_hw(self.size, *x.shape[-2:], self.max_size)
        return _resize_tensor(x, oh, ow, self.interpolation, self.antialias, self._v2)


class RandomResizedCrop(Transform):
    """torchvision's RandomResizedCrop: a box of area fraction in ``scale`` and aspect ratio in
    ``ratio`` (log-uniform; 10 tries, then the centred fallback), resized to ``size``. Bilinear is
    fused (Pillow's pixels); other interpolations run in Python. Tensors are resized as Resize
    resizes them."""

    _random = True

    _v2 = False  # as Resize's

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), interpolation="bilinear", antialias=True):
        self.size = _pair("size", size)
        self.scale, self.ratio, self.interpolation, self.antialias = (
            tuple(scale),
            tuple(ratio),
            interpolation,
            antialias,
        )
        self._op = _rs.TransformOp.random_resized_crop(
            size=self.size, scale=tuple(map(float, scale)), ratio=tuple(map(float, ratio))
        )
        self._native = _interp_name(interpolation) == "bilinear"

    def _ops(self):
        if not self._native:
            raise _NotNative("RandomResizedCrop")
        return [self._op]

    def get_params(self, h: int, w: int) -> tuple:
        """(top, left, height, width) of a box, drawn from torch's generator as torchvision draws it."""
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
            bw, bh = _python_round(math.sqrt(target * aspect)), _python_round(math.sqrt(target / aspect))
            if 0 < bw <= w and 0 < bh <= h:
                i = int(torch.randint(0, h - bh + 1, size=(1,)).item())
                j = int(torch.randint(0, w - bw + 1, size=(1,)).item())
                return i, j, bh, bw
        in_ratio = w / h
        if in_ratio < min(self.ratio):
            bw, bh = w, _python_round(w / min(self.ratio))
        elif in_ratio > max(self.ratio):
            bh, bw = h, _python_round(h * max(self.ratio))
        else:
            bw, bh = w, h
        return (h - bh) // 2, (w - bw) // 2, bh, bw

    def _python(self, img):
        kind = "pil" if _is_pil(img) else "tensor"
        pil = img if kind == "pil" else to_pil(torch.as_tensor(_hwc_array(img)[0]).permute(2, 0, 1))
        i, j, bh, bw = self.get_params(pil.height, pil.width)
        out = pil.crop((j, i, j + bw, i + bh)).resize(
            self.size[::-1], _PIL_FILTERS.get(_interp_name(self.interpolation), 2)
        )
        return out if kind == "pil" else torch.from_numpy(np.array(out)).reshape(*self.size, -1).permute(2, 0, 1)

    def __call__(self, img):
        if isinstance(img, torch.Tensor):
            return self._float(img)
        return super().__call__(img)

    def _float(self, x):
        i, j, bh, bw = self.get_params(*x.shape[-2:])
        box = x[..., i : i + bh, j : j + bw]
        return _resize_tensor(box, self.size[0], self.size[1], self.interpolation, self.antialias, self._v2)
