"""torchvision-style transforms that fastcifar fuses into one Rust pass per batch.

The names, arguments and semantics follow ``torchvision.transforms``. A ``Compose`` of these is
not run step by step: the loader compiles it once (crops, pads and flips become index maps, ToTensor
and Normalize torchvision's own float32 arithmetic, erasing a rectangle fill) and writes each batch
straight into the output tensor's memory from the uint8 images, on all cores.

torchvision's own transform objects (``torchvision.transforms`` and ``transforms.v2``) are
recognised and compiled the same way: flips, RandomCrop (every padding mode, ``pad_if_needed``),
CenterCrop, Pad, Resize and RandomResizedCrop (bilinear), ToTensor / ToImage + ToDtype(scale=True)
/ PILToTensor + ConvertImageDtype, Normalize and RandomErasing. Anything else (ColorJitter, Lambda,
a function of your own) is not refused: from the first such step on, the rest of the pipeline runs
per image in Python on exactly what torchvision would give it (a PIL image before ToTensor, a tensor
after), with a one-time warning that names the step.

Order rules of the fused pass: geometric transforms (crops, pads, flips, resizes) come before
``ToTensor``; ``Normalize``, ``RandomErasing`` and ``Cutout`` come after it. A step out of that
order runs in Python, as above.

Each transform is also callable on one image, as torchvision's are: a PIL image (geometric
transforms then return a PIL image), an HWC uint8 numpy array or a CHW uint8 tensor (they return a
CHW uint8 tensor), or a float tensor (computed with torch ops). ``ToTensor`` / ``Normalize`` work
on tensors of any device and on (N, C, H, W) batches, e.g. to normalise uint8 batches on the GPU.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, Callable, cast

import numpy as np
import torch

from . import _native as _rs

__all__ = [
    "Transform",
    "Compose",
    "RandomCrop",
    "CenterCrop",
    "Pad",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "AlternatingHorizontalFlip",
    "Resize",
    "RandomResizedCrop",
    "ToTensor",
    "PILToTensor",
    "ToImage",
    "ToDtype",
    "ConvertImageDtype",
    "Normalize",
    "RandomErasing",
    "Cutout",
    "Lambda",
    "ColorJitter",
    "RandomRotation",
    "from_torchvision",
]


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


_warned: set = set()


def _warn_python(step, why: str = "is not one of the transforms fused in Rust") -> None:
    name = getattr(step, "__name__", None) or type(step).__name__
    if name in _warned:
        return
    _warned.add(name)
    warnings.warn(
        f"fastcifar: {name} {why}, so from it on the pipeline runs per "
        f"image in Python (as torchvision would run it, on a PIL image before ToTensor, a tensor after); "
        f"batches are slower. fastcifar.transforms lists the fused ones.",
        stacklevel=3,
    )


class _NotNative(Exception):
    """This step has no fused op (with these arguments); it runs in Python."""


def _run_ops(native_ds, index: int, ops: list, seed: int | None = None) -> torch.Tensor:
    """Image ``index`` of a native data set through ``ops``, with fresh randomness."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    out_float = any(o.name in ("ToTensor", "ToDtype") for o in ops)
    loader = _rs.NativeLoader(
        native_ds,
        ops,
        batch_size=1,
        seed=seed,
        prefetch=1,
        dtype="float32" if out_float else "uint8",
        device="cpu",
        num_threads=1,
    )
    x, _ = loader.batch([index], 0)
    return x[0]


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

    def _apply_native(self, native_ds, index: int, seed: int | None = None) -> torch.Tensor:
        """This transform applied to image ``index`` of a native data set, with fresh randomness."""
        return _run_ops(native_ds, index, self._ops(), seed)

    def __call__(self, img):
        """Applies the transform to one image, as torchvision's twin does (see the module notes)."""
        if isinstance(img, torch.Tensor) and img.is_floating_point():
            return self._float(img)
        try:
            ops = self._ops()
        except _NotNative:
            return self._python(img)
        arr, kind = _hwc_array(img)
        native = _rs.NativeDataset.from_numpy(np.ascontiguousarray(arr[None]), [0], ["_"])
        out = _run_ops(native, 0, ops)
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
        plan = Plan(self)
        if plan.rest:
            raise _NotNative(plan.rest[0])
        return plan.ops

    def __call__(self, img):
        # A batch tensor on any device through tensor-capable steps (ToTensor, Normalize): GPU-side normalising.
        steps = _flatten(self)
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


def _python_round(v: float) -> int:
    return int(round(v))  # halves to even, as torchvision (Python) rounds


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


_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


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


class ToImage(PILToTensor):
    """transforms.v2's ToImage: a PIL image as a CHW uint8 tensor."""


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


# --- torchvision's transform objects --------------------------------------------------------------


def _tv_fill(t):
    fill = getattr(t, "fill", 0)
    if isinstance(fill, dict):  # v2 keeps a fill per input type
        fill = fill.get("others", next(iter(fill.values()), 0)) if fill else 0
    return 0 if fill is None else fill


def _tv_padding(t):
    pad = t.padding
    if ".v2." in type(t).__module__ and type(t).__name__ == "RandomCrop" and isinstance(pad, list) and len(pad) == 4:
        return [pad[0], pad[2], pad[1], pad[3]]  # v2's RandomCrop stores torch's (left, right, top, bottom)
    return pad


def _tv_size(size):
    return size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size


def _as_v2(t, twin):
    """``twin``, resizing tensors as transforms.v2 does when ``t`` is a v2 object."""
    twin._v2 = ".v2." in type(t).__module__
    return twin


_TORCHVISION = {
    "Compose": lambda t: Compose([from_torchvision(s) for s in t.transforms]),
    "RandomHorizontalFlip": lambda t: RandomHorizontalFlip(t.p),
    "RandomVerticalFlip": lambda t: RandomVerticalFlip(t.p),
    "RandomCrop": lambda t: RandomCrop(t.size, _tv_padding(t), t.pad_if_needed, _tv_fill(t), t.padding_mode),
    "CenterCrop": lambda t: CenterCrop(t.size),
    "Pad": lambda t: Pad(_tv_padding(t), _tv_fill(t), t.padding_mode),
    "Resize": lambda t: _as_v2(t, Resize(_tv_size(t.size), t.interpolation, t.max_size, t.antialias)),
    "RandomResizedCrop": lambda t: _as_v2(t, RandomResizedCrop(t.size, t.scale, t.ratio, t.interpolation, t.antialias)),
    "ToTensor": lambda t: ToTensor(),
    "PILToTensor": lambda t: PILToTensor(),
    "ToImage": lambda t: ToImage(),
    "ToDtype": lambda t: ToDtype(t.dtype, t.scale) if isinstance(t.dtype, torch.dtype) else t,
    "ConvertImageDtype": lambda t: (
        ToDtype(t.dtype, True) if ".v2." in type(t).__module__ else ConvertImageDtype(t.dtype)
    ),
    "Normalize": lambda t: Normalize(t.mean, t.std, t.inplace),
    "RandomErasing": lambda t: RandomErasing(
        t.p, t.scale, t.ratio, "random" if t.value is None else t.value, t.inplace
    ),
    "Lambda": lambda t: Lambda(t.lambd),
}


def from_torchvision(t):
    """The fastcifar twin of a torchvision transform (v1 or v2), recursively through Compose; any
    other object is returned as it is (it will run in Python)."""
    if isinstance(t, Transform) or not type(t).__module__.startswith("torchvision.transforms"):
        return t
    make = _TORCHVISION.get(type(t).__name__)
    if make is None:
        return t
    try:
        return make(t)
    except (ValueError, TypeError, AttributeError):
        return t  # arguments the fused pass does not take: torchvision's own object runs in Python


def _flatten(t) -> list:
    """The steps of a transform, Compose (fastcifar's or torchvision's) flattened, torchvision
    objects replaced by their fastcifar twins."""
    if t is None:
        return []
    t = from_torchvision(t)
    return [x for s in t.transforms for x in _flatten(s)] if isinstance(t, Compose) else [t]


class Plan:
    """A transform compiled for the fused pass: ``ops``, the longest prefix of steps with fused ops
    (in an order the pass takes), the image kind they leave (``state``: "pil", "uint8" or "float"),
    and ``rest``, the steps that then run per image in Python."""

    def __init__(self, transform):
        steps = _flatten(transform)
        ops, state, i = [], "pil", 0
        self.why = ""
        for i, s in enumerate(steps):  # noqa: B007 (after the loop, i is the step that left the fused pass)
            if not isinstance(s, Transform) or type(s)._ops is Transform._ops:
                self.why = "is not one of the transforms fused in Rust"
                break
            if state not in s._takes:
                self.why = (
                    "comes where the fused pass does not take it "
                    "(geometric steps go before ToTensor, Normalize and erasing after)"
                )
                break
            try:
                ops += s._ops()
            except _NotNative:
                self.why = "has arguments the fused pass does not take"
                break
            state = s._gives or state
        else:
            i = len(steps)
        self.ops, self.state, self.rest = ops, state, steps[i:]

    @property
    def float_out(self) -> bool:
        return self.state == "float"

    def python_input(self, chw: torch.Tensor):
        """One image of the fused pass as torchvision would hold it at that point."""
        return to_pil(chw) if self.state == "pil" else chw

    def run_rest(self, chw):
        """The Python steps on one fused result (a CHW tensor; or already a PIL image)."""
        x = chw if _is_pil(chw) else self.python_input(chw)
        for s in self.rest:
            x = s(x)
        return x

    def finish(self, chw: torch.Tensor):
        """A data set item: the fused result, then the Python steps; a PIL image where torchvision
        would still have one."""
        return self.run_rest(chw) if self.rest else self.python_input(chw)

    def run_one(self, img):
        """The whole transform on one image (PIL, HWC uint8 array or CHW uint8 tensor)."""
        if not self.ops:
            # No fused work, but the prefix may still have changed the image's kind (ToImage).
            x = img if self.state == "pil" or isinstance(img, torch.Tensor) else PILToTensor()(img)
            for s in self.rest:
                x = s(x)
            return x
        arr, kind = _hwc_array(img)
        native = _rs.NativeDataset.from_numpy(np.ascontiguousarray(arr[None]), [0], ["_"])
        out = _run_ops(native, 0, self.ops)
        if self.rest:
            return self.run_rest(out)
        return to_pil(out) if kind == "pil" and self.state == "pil" else out


def ops_of(transform, dtype: str) -> list:
    """The native ops of a transform that compiles whole; without one, float output ("float32" or
    "torch.float32") means ToTensor."""
    if transform is None:
        return [_rs.TransformOp.to_tensor()] if dtype in ("float32", "torch.float32") else []
    plan = Plan(transform)
    if plan.rest:
        raise TypeError(f"transform: {plan.rest[0]!r} does not run in the fused pass")
    return plan.ops


# The steps a checkpoint can rebuild: each one's ``_config()`` gives its constructor keywords. This one
# list serves ``to_config`` and ``from_config``; ``Transform._random`` says what evaluation leaves out.
_SAVED: dict[str, type[Transform]] = {
    c.__name__: c
    for c in (ToTensor, PILToTensor, ToImage, ToDtype, ConvertImageDtype, Normalize, Resize, CenterCrop, Pad)
}
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
    steps = [t for t in _flatten(transform) if not _is_random(t)]
    return Compose(steps) if steps else ToTensor()


def to_config(transform) -> list:
    """A JSON-able description of a deterministic transform (for checkpoints). A step that cannot
    be described is recorded by its repr, and ``from_config`` rebuilds it as a step that refuses
    to run, naming it (never silently left out)."""
    out: list[dict[str, Any]] = []
    for t in _flatten(transform):
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


def _native_op(ctor: str, kwargs: dict):
    """Rebuilds a pickled native op whose constructor takes keywords only (DataLoader workers
    started with spawn or forkserver receive transforms this way)."""
    return getattr(_rs.TransformOp, ctor)(**kwargs)
