"""The plan of a pipeline: which steps the fused pass runs (``Plan``) and which then run per image
in Python; and the one place that runs the native pass on single images or a batch of arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _native as _rs
from .._warn import warn_once
from .base import Compose, Transform, _hwc_array, _is_pil, _NotNative, to_pil
from .tensor import PILToTensor
from .torchvision import from_torchvision


def warn_python(step, why: str = "is not one of the transforms fused in Rust", stacklevel: int = 3) -> None:
    """Warns once per step that it runs in Python; ``stacklevel`` counts as ``warn_once``'s does
    (3: the caller of the function that calls this)."""
    name = getattr(step, "__name__", None) or type(step).__name__
    warn_once(
        ("python-step", name),
        f"fastcifar: {name} {why}, so from it on the pipeline runs per "
        f"image in Python (as torchvision would run it, on a PIL image before ToTensor, a tensor after); "
        f"batches are slower. fastcifar.transforms lists the fused ones.",
        stacklevel=stacklevel,
    )


def item_loader(native_ds, ops: list, seed: int | None = None) -> _rs.NativeLoader:
    """A one-thread native loader of ``ops`` over ``native_ds``, for single images; a fresh seed
    unless one is given."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    out_float = any(o.name in ("ToTensor", "ToDtype") for o in ops)
    return _rs.NativeLoader(
        native_ds,
        ops,
        batch_size=1,
        seed=seed,
        prefetch=1,
        dtype="float32" if out_float else "uint8",
        device="cpu",
        num_threads=1,
    )


def run_ops(native_ds, index: int, ops: list, seed: int | None = None) -> torch.Tensor:
    """Image ``index`` of a native data set through ``ops``, with fresh randomness."""
    x, _ = item_loader(native_ds, ops, seed).batch([index], 0)
    return x[0]


class ItemPass:
    """The fused pass on single items of one data set (``Dataset.__getitem__``): one one-thread
    loader, built for the data set and ops of the first item and reused while they stay the same
    (ops compare by their settings). Each item draws fresh randomness from torch's generator, as the
    key the loader's draws are made from (the "epoch"); deterministic ops give what a fresh loader
    gives."""

    def __init__(self) -> None:
        # (data set, the ops' settings, the loader built for them): one record, so none is stale.
        self._cached: tuple[Any, tuple, _rs.NativeLoader] | None = None

    def run(self, native_ds, index: int, ops: list) -> torch.Tensor:
        """Image ``index`` of ``native_ds`` through ``ops`` (a CHW tensor)."""
        settings = tuple(repr(o) for o in ops)
        if self._cached is None or self._cached[0] is not native_ds or self._cached[1] != settings:
            self._cached = (native_ds, settings, item_loader(native_ds, ops, seed=0))
        epoch = int(torch.randint(0, 2**62, ()).item())
        x, _ = self._cached[2].batch([index], epoch)
        return x[0]


def run_on_image(img, ops: list) -> tuple[torch.Tensor, str]:
    """One image (PIL, HWC uint8 array or CHW uint8 tensor) through ``ops``: the CHW result and
    the kind of image it came as."""
    arr, kind = _hwc_array(img)
    native = _rs.NativeDataset.from_numpy(np.ascontiguousarray(arr[None]), [0], ["_"])
    return run_ops(native, 0, ops), kind


def transform_batch(images: np.ndarray, transform) -> torch.Tensor:
    """(N, H, W, C) uint8 images through ``transform`` as the loader runs it (fused, then any
    Python steps in this thread), in order: what ``evaluate`` would feed the model."""
    from ..data.datasets import Dataset  # the data package builds on transforms
    from ..data.loader import DataLoader

    ds = Dataset.from_numpy(np.ascontiguousarray(images), [0] * len(images), classes=["_"])
    loader = DataLoader(ds, batch_size=len(images), transform=transform, seed=0, num_workers=0)
    x, _ = next(iter(loader))
    return x


def flatten(t) -> list:
    """The steps of a transform, Compose (fastcifar's or torchvision's) flattened, torchvision
    objects replaced by their fastcifar twins."""
    if t is None:
        return []
    t = from_torchvision(t)
    return [x for s in t.transforms for x in flatten(s)] if isinstance(t, Compose) else [t]


class Plan:
    """A transform compiled for the fused pass: ``ops``, the longest prefix of steps with fused ops
    (in an order the pass takes), the image kind they leave (``state``: "pil", "uint8" or "float"),
    and ``rest``, the steps that then run per image in Python."""

    def __init__(self, transform):
        steps = flatten(transform)
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
        out, kind = run_on_image(img, self.ops)
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


def _native_op(ctor: str, kwargs: dict):
    """Rebuilds a pickled native op whose constructor takes keywords only (DataLoader workers
    started with spawn or forkserver receive transforms this way)."""
    return getattr(_rs.TransformOp, ctor)(**kwargs)
