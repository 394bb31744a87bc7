"""torchvision's transform objects (``torchvision.transforms`` v1 and ``transforms.v2``) as their
fastcifar twins, so that the loader fuses them too."""

from __future__ import annotations

import torch

from .base import Compose, Transform
from .geometry import CenterCrop, Pad, RandomCrop, RandomHorizontalFlip, RandomResizedCrop, RandomVerticalFlip, Resize
from .python_steps import Lambda
from .tensor import ConvertImageDtype, Normalize, PILToTensor, RandomErasing, ToDtype, ToImage, ToTensor


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
