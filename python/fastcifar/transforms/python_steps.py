"""The transforms with no fused op, which run per image in Python as torchvision runs them:
Lambda, ColorJitter, RandomRotation."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Callable, cast

import numpy as np
import torch

from .base import _PIL_FILTERS, Transform, _floats, _hwc_array, _interp_name, _is_pil, _pil_module, to_pil


class Lambda(Transform):
    """A function as a transform (runs per image in Python)."""

    def __init__(self, lambd: Callable):
        if not callable(lambd):
            raise TypeError(f"Lambda: {type(lambd).__name__} object is not callable")
        self.lambd = lambd

    def __call__(self, img):
        return self.lambd(img)

    def __repr__(self) -> str:
        return f"Lambda({getattr(self.lambd, '__name__', self.lambd)!r})"


def _range(name: str, v, center: float = 1.0, bound=(0, float("inf")), clip_first: bool = True):
    if v is None:
        return None
    if isinstance(v, numbers.Number):
        # typeshed's Number declares no operators: compared and converted as its own type allows.
        x = cast(float, v)
        if x < 0:
            raise ValueError(f"{name}: {v} must be non-negative")
        lo, hi = center - float(x), center + float(x)
        if clip_first:
            lo = max(lo, 0.0)
    elif isinstance(v, Sequence) and len(v) == 2:
        lo, hi = float(v[0]), float(v[1])
    else:
        raise ValueError(f"{name}: expected a number or a (min, max) pair, got {v!r}")
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ValueError(f"{name}: values should be within {list(bound)}, got {[lo, hi]}")
    return None if lo == hi == center else (lo, hi)


def _as_pil(img):
    """(PIL image, how to give the result back) for a PIL image, uint8 array or uint8 tensor."""
    if _is_pil(img):
        return img, lambda p: p
    arr, kind = _hwc_array(img)
    back = (
        (lambda p: torch.from_numpy(np.array(p)).reshape(p.height, p.width, -1).permute(2, 0, 1))
        if kind == "tensor"
        else np.asarray
    )
    return to_pil(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))), back


class ColorJitter(Transform):
    """torchvision's ColorJitter: factors drawn from torch's generator in torchvision's order; PIL
    images through Pillow's ImageEnhance and HSV hue shift, as torchvision does them; tensors (uint8
    or float, (..., 3, H, W)) through blends with black, the mean grey and the greyscale image, and
    a rotation of the hue in HSV. Runs per image in Python."""

    _random = True

    def __init__(self, brightness=0, contrast=0, saturation=0, hue=0):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self._b, self._c, self._s = (
            _range(n, v) for n, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation))
        )
        self._h = _range("hue", hue, center=0.0, bound=(-0.5, 0.5), clip_first=False)

    def get_params(self):
        order = torch.randperm(4)

        def draw(r):
            return None if r is None else float(torch.empty(1).uniform_(r[0], r[1]))

        return order, draw(self._b), draw(self._c), draw(self._s), draw(self._h)

    def __call__(self, img):
        from PIL import ImageEnhance

        if isinstance(img, torch.Tensor):
            return self._tensor(img)
        pil, back = _as_pil(img)
        order, b, c, s, h = self.get_params()
        for k in order.tolist():
            if k == 0 and b is not None:
                pil = ImageEnhance.Brightness(pil).enhance(b)
            elif k == 1 and c is not None:
                pil = ImageEnhance.Contrast(pil).enhance(c)
            elif k == 2 and s is not None:
                pil = ImageEnhance.Color(pil).enhance(s)
            elif k == 3 and h is not None:
                pil = _hue_pil(pil, h)
        return back(pil)

    def _tensor(self, x: torch.Tensor) -> torch.Tensor:
        order, b, c, s, h = self.get_params()
        for k in order.tolist():
            if k == 0 and b is not None:
                x = _blend(x, torch.zeros_like(x), b)
            elif k == 1 and c is not None:
                x = _blend(x, _grey(x).to(torch.float32).mean(dim=(-3, -2, -1), keepdim=True), c)
            elif k == 2 and s is not None:
                x = _blend(x, _grey(x), s)
            elif k == 3 and h is not None:
                x = _hue_tensor(x, h)
        return x


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of (..., 3, H, W), one channel, in x's dtype."""
    r, g, b = x.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(x.dtype).unsqueeze(dim=-3)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: float) -> torch.Tensor:
    top = 1.0 if a.is_floating_point() else 255.0
    return (ratio * a + (1.0 - ratio) * b).clamp(0, top).to(a.dtype)


def _hue_tensor(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotates the hue of (..., 3, H, W) by ``shift`` turns, through HSV."""
    dtype = x.dtype
    f = x.to(torch.float32) / 255.0 if not dtype.is_floating_point else x
    r, g, b = f.unbind(dim=-3)
    hi, lo = f.max(dim=-3).values, f.min(dim=-3).values
    grey = hi == lo
    span = hi - lo
    sat = span / torch.where(grey, torch.ones_like(hi), hi)
    d = torch.where(grey, torch.ones_like(span), span)
    rc, gc, bc = (hi - r) / d, (hi - g) / d, (hi - b) / d
    hue = (hi == r) * (bc - gc) + ((hi == g) & (hi != r)) * (2.0 + rc - bc) + ((hi != g) & (hi != r)) * (4.0 + gc - rc)
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    hue = (hue + shift) % 1.0
    i = torch.floor(hue * 6.0)
    frac = hue * 6.0 - i
    i = i.to(torch.int32) % 6
    p = (hi * (1.0 - sat)).clamp(0.0, 1.0)
    q = (hi * (1.0 - sat * frac)).clamp(0.0, 1.0)
    t = (hi * (1.0 - sat * (1.0 - frac))).clamp(0.0, 1.0)
    sector = i.unsqueeze(dim=-3) == torch.arange(6, device=i.device).view(-1, 1, 1)

    def choose(*vals):
        return torch.einsum("...ijk,...ijk->...jk", sector.to(f.dtype), torch.stack(vals, dim=-3))

    out = torch.stack([choose(hi, q, p, p, t, hi), choose(t, hi, hi, q, p, p), choose(p, p, t, hi, hi, q)], dim=-3)
    # Back to bytes as torchvision's convert_image_dtype does: scaled by 256 - 1e-3, truncated.
    return out.to(dtype) if dtype.is_floating_point else (out * (255.0 + 1.0 - 1e-3)).to(dtype)


def _hue_pil(pil, factor: float):
    if pil.mode in ("L", "1", "I", "F"):
        return pil
    mode = pil.mode
    hh, ss, vv = pil.convert("HSV").split()
    np_h = np.array(hh, dtype=np.uint8)
    with np.errstate(over="ignore"):
        np_h += np.array(factor * 255).astype(np.uint8)
    Image = _pil_module()
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), ss, vv)).convert(mode)


class RandomRotation(Transform):
    """torchvision's RandomRotation on PIL images: an angle uniform in ``degrees``, Pillow's
    rotate (nearest by default, ``expand``, ``center``, ``fill``). Runs per image in Python; float
    tensors are rotated channel by channel as Pillow float images."""

    _random = True

    def __init__(self, degrees, interpolation="nearest", expand: bool = False, center=None, fill=0):
        if isinstance(degrees, numbers.Number):
            # typeshed's Number declares no operators: compared and converted as its own type allows.
            d = cast(float, degrees)
            if d < 0:
                raise ValueError(f"degrees: {degrees} must be non-negative when it is a single number")
            degrees = (-float(d), float(d))
        if not (isinstance(degrees, Sequence) and len(degrees) == 2):
            raise ValueError(f"degrees: expected a number or a (min, max) pair, got {degrees!r}")
        self.degrees, self.interpolation, self.expand, self.center, self.fill = (
            tuple(map(float, degrees)),
            interpolation,
            expand,
            center,
            fill,
        )

    def get_params(self) -> float:
        return float(torch.empty(1).uniform_(self.degrees[0], self.degrees[1]).item())

    def __call__(self, img):
        angle = self.get_params()
        resample = _PIL_FILTERS.get(_interp_name(self.interpolation), 0)
        if isinstance(img, torch.Tensor) and img.is_floating_point():
            Image = _pil_module()
            fills = _floats("fill", self.fill or 0)
            chans = [
                Image.fromarray(ch.detach().cpu().numpy().astype(np.float32), "F").rotate(
                    angle, resample, self.expand, self.center, fillcolor=fills[k % len(fills)]
                )
                for k, ch in enumerate(img)
            ]
            return torch.stack([torch.from_numpy(np.array(ch)) for ch in chans]).to(img.dtype)
        pil, back = _as_pil(img)
        fill = self.fill if self.fill is not None else 0
        fills = [int(v) for v in _floats("fill", fill)]
        bands = len(pil.getbands())
        fillcolor = fills[0] if bands == 1 else tuple((fills * bands)[:bands]) if len(fills) == 1 else tuple(fills)
        return back(pil.rotate(angle, resample, self.expand, self.center, fillcolor=fillcolor))
