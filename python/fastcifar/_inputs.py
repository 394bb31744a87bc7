"""What ``Trainer.predict`` accepts, turned into uint8 images (N, H, W, C) for the eval transform:
file paths and PIL images of any mode and size (converted to the model's channels and resized to
its input size, as the CLI's ``predict`` does), numpy arrays (H, W), (H, W, C), (N, H, W, C), and
uint8 tensors (C, H, W), (N, C, H, W). Float tensors pass through: they are already a batch."""

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


def _pil_to_array(img, channels: int | None, size: tuple[int, int] | None, where: str) -> np.ndarray:
    mode = _MODES.get(channels or 3)
    if mode is None:
        raise ValueError(
            f"images: the model takes {channels} channels; pass uint8 arrays (N, H, W, {channels}) instead of {where}"
        )
    img = img.convert(mode)
    if size is not None and img.size != (size[1], size[0]):
        from PIL import Image

        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def _open(path, channels, size) -> np.ndarray:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: no such image file")
    try:
        from PIL import Image
    except ImportError:
        if (channels or 3) != 3 or size is None:
            raise ImportError("reading image files for predict needs Pillow here: pip install pillow") from None
        from . import _native

        return np.asarray(_native.decode_images([p], size))[0]
    try:
        with Image.open(p) as img:
            return _pil_to_array(img, channels, size, p)
    except OSError as e:
        raise ValueError(f"{p}: cannot read this image ({e})") from None


def to_images(images, channels: int | None, size: tuple[int, int] | None):
    """uint8 (N, H, W, C) numpy images, or a float tensor batch as given."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        return images if images.dim() == 4 else images.unsqueeze(0)
    if _is_path(images) or _is_pil(images):
        images = [images]
    if isinstance(images, (list, tuple)) and images and (_is_path(images[0]) or _is_pil(images[0])):
        arrs = [
            _open(x, channels, size) if _is_path(x) else _pil_to_array(x, channels, size, "a PIL image") for x in images
        ]
        return np.stack(arrs)
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"images: expected float or uint8, got {images.dtype}")
        arr = images.cpu().numpy()
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim != 4:
            raise ValueError(f"images: expected (N, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
        return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
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
    if channels is not None and arr.shape[-1] != channels:
        raise ValueError(
            f"images: have {arr.shape[-1]} channels, the model takes {channels}; convert them (for example "
            f"PIL's image.convert('{_MODES.get(channels, 'RGB')}')), "
            "or pass file paths or PIL images, which are converted"
        )
    return np.ascontiguousarray(arr)


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
