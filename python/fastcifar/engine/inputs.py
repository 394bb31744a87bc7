"""What ``Trainer.predict`` accepts, turned into the float batch (N, C, H, W) the model takes.

- File paths and PIL images of any mode and size (and lists of them, which may also hold uint8
  arrays (H, W, C) and uint8 tensors (C, H, W)): each is converted to the model's channels, then
  the eval transform runs on it as torchvision would run it, on the image as it is (its own
  Resize, CenterCrop, ...). Only when that does not give the model's input size is the image first
  resized to that size (bilinear, as the CLI's ``predict`` does) and transformed again.
- numpy uint8 arrays (H, W), (H, W, C), (N, H, W, C) and uint8 tensors (C, H, W), (N, C, H, W):
  the eval transform runs on them as the loader runs it on a data set's images; they are not resized.
- Float tensors pass through: they are already a batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _is_pil(x) -> bool:
    return type(x).__module__.startswith("PIL.")


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def _mode(channels: int | None, where: str) -> str:
    mode = _MODES.get(channels or 3)
    if mode is None:
        raise ValueError(
            f"images: the model takes {channels} channels; pass uint8 arrays (N, H, W, {channels}) instead of {where}"
        )
    return mode


def _checked_pil(img, channels: int | None, where: str):
    """``img`` in the model's mode, refused by name when it is empty or holds NaN / inf."""
    if img.width == 0 or img.height == 0:
        raise ValueError(f"images: {where} is {img.width}x{img.height} pixels: an empty image has no class")
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"images: {where} (mode F) holds NaN or inf values")
    return img.convert(_mode(channels, where))


def _open(path, channels):
    from PIL import Image

    from .._files import check_regular

    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: no such image file")
    check_regular(p)
    try:
        with Image.open(p) as img:
            return _checked_pil(img, channels, p)
    except OSError as e:
        raise ValueError(f"{p}: cannot read this image ({e})") from None


def _item_pil(x, i: int, channels: int | None):
    """One item of a list as a PIL image: a path, a PIL image, a uint8 array (H, W[, C]) or a uint8
    tensor ([C,] H, W)."""
    from .. import transforms as T

    where = f"item {i}"
    if _is_path(x):
        return _open(x, channels)
    if _is_pil(x):
        return _checked_pil(x, channels, f"{where} (a PIL image)")
    if isinstance(x, torch.Tensor) and not x.is_floating_point() and x.dim() in (2, 3):
        x = x.detach().cpu().numpy()
        x = x.transpose(1, 2, 0) if x.ndim == 3 else x
    if isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim in (2, 3):
        hwc = x[..., None] if x.ndim == 2 else x
        if hwc.shape[-1] not in (1, 3):
            raise ValueError(f"images: {where} has shape {x.shape}; a list takes (H, W) or (H, W, C) images, C 1 or 3")
        return _checked_pil(T.pil_from_hwc(hwc), channels, where)
    raise TypeError(
        f"images: {where} is {type(x).__name__}"
        + (f" of dtype {x.dtype} and shape {tuple(x.shape)}" if hasattr(x, "dtype") else "")
        + "; a list takes file paths, PIL images and uint8 images (a float batch goes as one tensor (N, C, H, W))"
    )


def _as_float(x) -> torch.Tensor:
    """A transform's result as a float (C, H, W) tensor: what the model takes."""
    from .. import transforms as T

    if _is_pil(x) or isinstance(x, np.ndarray):
        return T.ToTensor()(x)
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        return x.float().div_(255.0)
    return x


def _each(pils: list, transform, size: tuple[int, int] | None) -> torch.Tensor:
    """The transform on each image as it is; where that misses the model's size, on the image
    resized to that size."""
    from PIL import Image

    outs = []
    for img in pils:
        x = _as_float(transform(img))
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = _as_float(transform(img.resize((size[1], size[0]), Image.Resampling.BILINEAR)))
        check_size(x.shape, size)
        outs.append(x)
    return torch.stack(outs)


def _arrays(images, channels: int | None) -> np.ndarray:
    """uint8 images (N, H, W, C) from an array or a uint8 tensor, checked."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"images: expected float or uint8, got {images.dtype}")
        arr = images.cpu().numpy()
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim != 4:
            raise ValueError(f"images: expected (N, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
        arr = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
    else:
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise TypeError(
                "images: expected file paths, PIL images, uint8 images (N, H, W, C) or a float tensor, "
                f"got dtype {arr.dtype}"
            )
        if arr.ndim == 2 or (arr.ndim == 3 and channels == 1 and arr.shape[-1] != 1):
            arr = arr[..., None]  # (H, W) or (N, H, W) grayscale
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim != 4:
            raise ValueError(f"images: expected (N, H, W, C) or (H, W, C), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"images: no images (an array of shape {arr.shape})")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"images: {arr.shape[1]}x{arr.shape[2]} pixels: an empty image has no class")
    if channels is not None and arr.shape[-1] != channels:
        raise ValueError(
            f"images: have {arr.shape[-1]} channels, the model takes {channels}; convert them (for example "
            f"PIL's image.convert('{_MODES.get(channels, 'RGB')}')), "
            "or pass file paths or PIL images, which are converted"
        )
    return np.ascontiguousarray(arr)


def _through_loader(arr: np.ndarray, transform, size: tuple[int, int] | None) -> torch.Tensor:
    """The transform over uint8 images as the loader runs it (fused, then any Python steps in this
    thread), as ``evaluate`` would run it."""
    from ..transforms.plan import transform_batch

    x = _as_float(transform_batch(arr, transform))
    check_size(x.shape[1:], size)
    return x


def to_batch(images, transform, channels: int | None, size: tuple[int, int] | None) -> torch.Tensor:
    """The float batch (N, C, H, W) for ``images`` (see the module notes); ``transform`` is the eval
    transform, ``channels`` and ``size`` the model's input (None: not known)."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        return images if images.dim() == 4 else images.unsqueeze(0)
    if _is_path(images) or _is_pil(images):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"images: no images (an empty {type(images).__name__})")
        if any(_is_path(x) or _is_pil(x) for x in images):
            try:
                import PIL  # noqa: F401
            except ImportError:
                return _without_pil(images, transform, channels, size)
            return _each([_item_pil(x, i, channels) for i, x in enumerate(images)], transform, size)
    return _through_loader(_arrays(images, channels), transform, size)


def _without_pil(images: Sequence, transform, channels: int | None, size: tuple[int, int] | None) -> torch.Tensor:
    """Image files without Pillow: decoded in Rust, resized to the model's input, then the transform
    as for arrays."""
    from .. import _native
    from ..data.datasets import MAX_IMAGE_PIXELS

    if (channels or 3) != 3 or size is None or not all(_is_path(x) for x in images):
        raise ImportError("reading image files and PIL images for predict needs Pillow here: pip install pillow")
    paths = [os.fspath(p) for p in images]
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: no such image file")
    arr = np.asarray(_native.decode_images(paths, size, max_pixels=MAX_IMAGE_PIXELS))
    return _through_loader(arr, transform, size)


def check_size(out_shape: Sequence[int], size: tuple[int, int] | None) -> None:
    """Images that the transform leaves at another size than the model's get a message with the fix."""
    if size is None or tuple(out_shape[1:]) == tuple(size):
        return
    h, w = out_shape[1:]
    raise ValueError(
        f"images: come out of the transform at {h}x{w}, but the model was trained on {size[0]}x{size[1]}; resize "
        f"them, pass file paths or PIL images (resized for you), or pass transform=T.Compose([T.Resize({tuple(size)}), "
        f"T.ToTensor(), T.Normalize(...)])"
    )
