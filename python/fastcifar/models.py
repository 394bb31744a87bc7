"""CNNs whose forward and backward run in libtorch from Rust, with PyTorch's state_dict layout.

    model = fastcifar.models.ImageClassifier(num_classes=10)      # the seed tutorial's network
    model = fastcifar.models.resnet18(num_classes=10, cifar_stem=True)
    model = fastcifar.models.resnet9()                             # DAWNBench ResNet-9
    logits = model(images)                                         # torch tensor in, torch tensor out

A fastcifar state_dict loads with ``strict=True`` into the equivalent plain PyTorch module
(``model.to_torch()`` builds it: see ``fastcifar.reference``) and gives the same logits; the other
way round too.
"""
from __future__ import annotations

import collections
import os
from typing import List, NamedTuple, Optional

import torch

from . import _native as _rs
from ._io import atomic_write

__all__ = ["Model", "ImageClassifier", "resnet18", "resnet9", "small_cnn", "RESNET18_URL"]

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


class IncompatibleKeys(NamedTuple):
    missing_keys: List[str]
    unexpected_keys: List[str]


def _device_str(device) -> str:
    d = str(device)
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return d


class Model:
    """A network held in Rust. Call it like an ``nn.Module``: ``model(x)`` gives logits."""

    def __init__(self, arch: str, num_classes: int = 10, cifar_stem: bool = False, width: int = 32):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"num_classes: expected an int, got {num_classes!r}")
        self._native = _rs.NativeModel(arch, num_classes, cifar_stem, width)

    # --- nn.Module-like surface ------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for a float batch (N, 3, H, W) on the model's device. In train
        mode the result carries autograd history, so a plain PyTorch loop can train the model."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.layout != torch.strided:
            raise ValueError(f"x: expected a dense tensor, got layout {x.layout}")
        if x.device != self.device:
            raise ValueError(f"x: is on {x.device} but the model is on {self.device}; move one with .to()")
        return self._native.forward(x)

    def train(self, mode: bool = True) -> "Model":
        self._native.training = bool(mode)
        return self

    def eval(self) -> "Model":
        return self.train(False)

    @property
    def training(self) -> bool:
        return self._native.training

    def to(self, device) -> "Model":
        self._native.to(_device_str(device))
        return self

    def cuda(self) -> "Model":
        return self.to("cuda")

    def cpu(self) -> "Model":
        return self.to("cpu")

    @property
    def device(self) -> torch.device:
        return torch.device(self._native.device)

    @property
    def name(self) -> str:
        return self._native.arch[0]

    @property
    def num_classes(self) -> int:
        return self._native.arch[1]

    @property
    def config(self) -> dict:
        """What it takes to rebuild this architecture (stored in checkpoints)."""
        name, nc, stem, width = self._native.arch
        cfg = {"arch": name, "num_classes": nc}
        if name == "resnet18":
            cfg["cifar_stem"] = stem
        if name == "small_cnn":
            cfg["width"] = width
        return cfg

    @classmethod
    def from_config(cls, cfg: dict) -> "Model":
        cfg = dict(cfg)
        arch = cfg.pop("arch")
        return cls(arch, **cfg)

    def state_dict(self) -> "collections.OrderedDict[str, torch.Tensor]":
        """Copies of every parameter and buffer, keyed and ordered as the PyTorch module's."""
        return collections.OrderedDict(self._native.state_dict())

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Loads tensors by name; with ``strict`` every key must match. Errors name the missing,
        unexpected and mis-shaped keys."""
        if not isinstance(state_dict, collections.abc.Mapping):
            raise TypeError(f"state_dict: expected a mapping of names to tensors, got {type(state_dict).__name__}")
        items = []
        for k, v in state_dict.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"state_dict: value of '{k}' is a {type(v).__name__}, not a tensor")
            items.append((str(k), v))
        missing, unexpected = self._native.load_state_dict(items, strict)
        return IncompatibleKeys(missing, unexpected)

    def parameters(self, prefix: str = "") -> List[torch.Tensor]:
        """The live parameter tensors (shared with the model), optionally those under ``prefix``."""
        return [t for _, t in self._native.parameters(prefix)]

    def named_parameters(self, prefix: str = ""):
        return list(self._native.parameters(prefix))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return self._native.num_parameters(trainable_only)

    def freeze(self, prefix: str = "") -> "Model":
        """Stops gradients for the parameters under ``prefix`` (all by default)."""
        self._native.set_trainable(prefix, False)
        return self

    def unfreeze(self, prefix: str = "") -> "Model":
        self._native.set_trainable(prefix, True)
        return self

    def replace_head(self, num_classes: int) -> "Model":
        """A fresh, trainable classifier layer for ``num_classes`` classes (transfer learning)."""
        self._native.replace_head(int(num_classes))
        return self

    # --- files -----------------------------------------------------------------------------
    def save(self, path) -> None:
        """Weights alone: ``torch.save(state_dict)`` (or safetensors for a ``.safetensors`` path),
        written atomically."""
        path = os.fspath(path)
        if path.endswith(".safetensors"):
            atomic_write(path, lambda tmp: self._native.save_safetensors(tmp))
        else:
            sd = collections.OrderedDict((k, v.cpu()) for k, v in self.state_dict().items())
            atomic_write(path, lambda tmp: torch.save(sd, tmp))

    def load(self, path, strict: bool = True) -> IncompatibleKeys:
        """Loads weights from ``torch.save`` output (a state_dict, or a checkpoint holding
        ``model_state_dict``) or from a ``.safetensors`` file."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        if path.endswith(".safetensors"):
            return IncompatibleKeys(*self._native.load_safetensors(path, strict))
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable torch.save file ({e})") from e
        if isinstance(obj, dict) and "model_state_dict" in obj:
            obj = obj["model_state_dict"]
        return self.load_state_dict(obj, strict)

    def to_torch(self) -> torch.nn.Module:
        """The equivalent plain PyTorch module (``fastcifar.reference``) with these weights."""
        from . import reference

        m = reference.build(self.config)
        m.load_state_dict(self.state_dict(), strict=True)
        return m.to(self.device).train(self.training)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config}, parameters={self.num_parameters():,}, device={self.device})"


def ImageClassifier(num_classes: int = 10) -> Model:
    """The seed tutorial's CNN (3,249,994 parameters at 10 classes); 32x32 inputs."""
    return Model("image_classifier", num_classes)


def resnet9(num_classes: int = 10) -> Model:
    """The DAWNBench ResNet-9 (prep, 3 stages, 2 residual blocks, max-pool, fc scaled by 1/8)."""
    return Model("resnet9", num_classes)


def small_cnn(num_classes: int = 10, width: int = 32) -> Model:
    """A small 3-block CNN that trains in seconds on CPU (for tests and quick runs)."""
    return Model("small_cnn", num_classes, width=width)


def resnet18(num_classes: int = 1000, cifar_stem: bool = False, pretrained: bool = False, weights: Optional[str] = None) -> Model:
    """torchvision's resnet18 layout. ``cifar_stem`` uses a 3x3 stride-1 first conv and no max-pool.

    ``pretrained=True`` loads torchvision's ImageNet weights (downloading them to torch's hub cache
    when online); ``weights=`` takes a local file or state dict instead. With ``num_classes`` other
    than 1000 the backbone is loaded and a fresh ``fc`` is kept, ready for transfer learning.
    """
    m = Model("resnet18", num_classes, cifar_stem=cifar_stem)
    if pretrained or weights is not None:
        sd = weights if isinstance(weights, dict) else _resnet18_weights(weights)
        if cifar_stem:
            sd = {k: v for k, v in sd.items() if k != "conv1.weight"}
        if num_classes != 1000:
            sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        m.load_state_dict(sd, strict=False)
    return m


def _resnet18_weights(path: Optional[str]) -> dict:
    if path is None:
        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        path = os.path.join(hub, os.path.basename(RESNET18_URL))
        if not os.path.exists(path):
            try:
                torch.hub.download_url_to_file(RESNET18_URL, path, progress=True)
            except Exception as e:
                raise RuntimeError(
                    f"could not download the resnet18 weights from {RESNET18_URL} ({e}). Without internet, "
                    f"download that file elsewhere and put it at {path}, or pass weights='/path/to/resnet18.pth'"
                ) from e
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (resnet18 weights)")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model_state_dict" in sd:
        sd = sd["model_state_dict"]
    return sd
