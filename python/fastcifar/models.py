"""The built-in networks: plain ``torch.nn.Module`` classes, defined once, that ``fastcifar.Trainer``
runs on the Rust engine exactly as it runs your own module.

    model = fastcifar.models.ImageClassifier(num_classes=10)          # the seed tutorial's network
    model = fastcifar.models.ImageClassifier(in_channels=1, input_size=28)   # Fashion-MNIST
    model = fastcifar.models.resnet18(num_classes=10, cifar_stem=True)
    model = fastcifar.models.resnet9()                                 # DAWNBench ResNet-9
    logits = model(images)                                             # a torch module: eager PyTorch

They keep PyTorch's state_dict layout (torchvision's for resnet18), so their weights load into and
from the equivalent code anywhere. ``fastcifar.models.Module`` adds a few conveniences on top of
``nn.Module`` (save / load with safetensors, freeze, replace_head, config).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
import torch.nn as nn

from . import _native as _rs
from ._files import atomic_write

__all__ = [
    "Module",
    "Model",
    "ImageClassifier",
    "ResNet9",
    "SmallCNN",
    "ResNet18",
    "resnet18",
    "resnet9",
    "small_cnn",
    "RESNET18_URL",
]

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int, got {v!r}")
    if v < 1:
        raise ValueError(f"{name}: {v} must be at least 1")
    return v


class Module(nn.Module):
    """``nn.Module`` plus fastcifar's conveniences. The built-ins derive from it; any ``nn.Module``
    trains with ``fastcifar.Trainer`` without it."""

    arch = "module"
    head = "fc"

    def _record(self, **config) -> None:
        self._config = dict(config)

    @property
    def config(self) -> dict:
        """What it takes to rebuild this architecture (stored in checkpoints)."""
        return {"arch": self.arch, **getattr(self, "_config", {})}

    @classmethod
    def from_config(cls, cfg: dict) -> Module:
        cfg = dict(cfg)
        arch = cfg.pop("arch")
        if arch not in _ARCHS:
            raise ValueError(f"arch: unknown model '{arch}' (known: {', '.join(_ARCHS)})")
        return _ARCHS[arch](**cfg)

    @property
    def name(self) -> str:
        return self.arch

    @property
    def device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def _head(self) -> nn.Linear:
        # Every built-in's `head` names its final nn.Linear.
        return cast(nn.Linear, self.get_submodule(self.head))

    @property
    def num_classes(self) -> int:
        return self._head().out_features

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _matching(self, prefix: str) -> list[nn.Parameter]:
        ps = [p for n, p in self.named_parameters() if not prefix or n == prefix or n.startswith(prefix + ".")]
        if prefix and not ps:
            raise ValueError(f"prefix: '{prefix}' names no parameter of {self.arch}")
        return ps

    def freeze(self, prefix: str = "") -> Module:
        """Stops gradients for the parameters under ``prefix`` (all by default)."""
        for p in self._matching(prefix):
            p.requires_grad_(False)
        return self

    def unfreeze(self, prefix: str = "") -> Module:
        for p in self._matching(prefix):
            p.requires_grad_(True)
        return self

    def replace_head(self, num_classes: int) -> Module:
        """A fresh, trainable classifier layer for ``num_classes`` classes (transfer learning)."""
        _positive_int("num_classes", num_classes)
        old = self._head()
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
        parent, _, leaf = self.head.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, leaf, new)
        if "num_classes" in getattr(self, "_config", {}):
            self._config["num_classes"] = num_classes
        return self

    def to_torch(self) -> nn.Module:
        """The module itself: the built-ins are plain PyTorch modules."""
        return self

    # --- files -------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Weights alone: ``torch.save(state_dict)`` (or safetensors for a ``.safetensors`` path),
        written atomically."""
        path = os.fspath(path)
        sd = collections.OrderedDict((k, v.detach().cpu()) for k, v in self.state_dict().items())
        if path.endswith(".safetensors"):
            atomic_write(path, lambda tmp: _rs.save_safetensors(list(sd.items()), tmp))
        else:
            atomic_write(path, lambda tmp: torch.save(sd, tmp))

    def load(self, path, strict: bool = True) -> IncompatibleKeys:
        """Loads weights from ``torch.save`` output (a state_dict, or a checkpoint holding
        ``model_state_dict``) or from a ``.safetensors`` file."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        obj: Any  # a state_dict, or a whole checkpoint until its model_state_dict is taken
        if path.endswith(".safetensors"):
            obj = dict(_rs.load_safetensors(path))
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ValueError(f"{path}: not a readable torch.save file ({e})") from e
            if isinstance(obj, dict) and "model_state_dict" in obj:
                obj = obj["model_state_dict"]
        return self.load_state_dict(obj, strict)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, with one message naming every missing, unexpected and
        mis-shaped key."""
        if not isinstance(state_dict, collections.abc.Mapping):
            raise TypeError(f"state_dict: expected a mapping of names to tensors, got {type(state_dict).__name__}")
        own = self.state_dict()
        bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"state_dict: value of '{bad[0]}' is a {type(state_dict[bad[0]]).__name__}, not a tensor")
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mis = [
            f"{k}: checkpoint {list(v.shape)}, model {list(own[k].shape)}"
            for k, v in state_dict.items()
            if k in own and v.shape != own[k].shape
        ]
        if mis or (strict and (missing or unexpected)):
            parts = []
            if missing:
                parts.append("missing keys: " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected keys: " + ", ".join(unexpected))
            if mis:
                parts.append("shape mismatch: " + "; ".join(mis))
            raise ValueError(f"state_dict: does not fit {self.arch}: " + ". ".join(parts))
        r = super().load_state_dict(state_dict, strict=False, assign=assign)
        return IncompatibleKeys(list(r.missing_keys), list(r.unexpected_keys))

    def extra_repr(self) -> str:
        return f"parameters={self.num_parameters():,}"


Model = Module  # the name of the wrapper in fastcifar 0.1


def _hw(input_size) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    if not (
        isinstance(input_size, (tuple, list))
        and len(input_size) == 2
        and all(isinstance(v, int) and v >= 8 for v in input_size)
    ):
        raise ValueError(f"input_size: expected an int or (height, width) of at least 8, got {input_size!r}")
    return int(input_size[0]), int(input_size[1])


class ImageClassifier(Module):
    """The seed tutorial's CNN (3,249,994 parameters at 10 classes, 3 channels, 32x32). Its flatten
    size follows ``input_size`` (an int or (height, width))."""

    arch = "image_classifier"
    head = "fc2"

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int | Sequence[int] = 32):
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("in_channels", in_channels)
        h, w = _hw(input_size)
        self._record(
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size if isinstance(input_size, int) else [h, w],
        )
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.conv4 = nn.Conv2d(128, 128, kernel_size=3, padding=1)
        self.bn4 = nn.BatchNorm2d(128)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv5 = nn.Conv2d(128, 256, kernel_size=3, padding=1)
        self.bn5 = nn.BatchNorm2d(256)
        self.conv6 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.bn6 = nn.BatchNorm2d(256)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(256 * (h // 8) * (w // 8), 512)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(512, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.pool1(x)
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.relu(self.bn4(self.conv4(x)))
        x = self.pool2(x)
        x = self.relu(self.bn5(self.conv5(x)))
        x = self.relu(self.bn6(self.conv6(x)))
        x = self.pool3(x)
        x = x.view(x.size(0), -1)
        x = self.relu(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)


def _cbr(cin: int, cout: int, pool: bool = False) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class ResNet9(Module):
    """The DAWNBench ResNet-9 (Myrtle.ai): prep, 3 stages, 2 residual blocks, max-pool, fc scaled by 1/8."""

    arch = "resnet9"

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("in_channels", in_channels)
        self._record(num_classes=num_classes, in_channels=in_channels)
        self.prep = nn.Sequential(*_cbr(in_channels, 64))
        self.layer1 = nn.Sequential(*_cbr(64, 128, pool=True))
        self.res1 = nn.Sequential(*_cbr(128, 128), *_cbr(128, 128))
        self.layer2 = nn.Sequential(*_cbr(128, 256, pool=True))
        self.layer3 = nn.Sequential(*_cbr(256, 512, pool=True))
        self.res3 = nn.Sequential(*_cbr(512, 512), *_cbr(512, 512))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(512, num_classes, bias=False)

    def forward(self, x):
        x = self.layer1(self.prep(x))
        x = x + self.res1(x)
        x = self.layer3(self.layer2(x))
        x = x + self.res3(x)
        return self.fc(self.pool(x).flatten(1)) * 0.125


class SmallCNN(Module):
    """A small 3-block CNN that trains in seconds on CPU (for tests and quick runs)."""

    arch = "small_cnn"

    def __init__(self, num_classes: int = 10, width: int = 32, in_channels: int = 3):
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("width", width)
        _positive_int("in_channels", in_channels)
        self._record(num_classes=num_classes, width=width, in_channels=in_channels)
        w = width
        self.conv1, self.bn1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.conv2, self.bn2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.conv3, self.bn3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class BasicBlock(nn.Module):
    """torchvision's resnet BasicBlock, with its state_dict names."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(Module):
    """torchvision's resnet18 layout and initialisation. ``cifar_stem`` uses a 3x3 stride-1 first
    conv and no max-pool (for 32x32 images)."""

    arch = "resnet18"

    def __init__(self, num_classes: int = 1000, cifar_stem: bool = False, in_channels: int = 3):
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("in_channels", in_channels)
        self._record(num_classes=num_classes, cifar_stem=bool(cifar_stem), in_channels=in_channels)
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet9(num_classes: int = 10, in_channels: int = 3) -> ResNet9:
    return ResNet9(num_classes, in_channels=in_channels)


def small_cnn(num_classes: int = 10, width: int = 32, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(num_classes, width=width, in_channels=in_channels)


def resnet18(
    num_classes: int = 1000,
    cifar_stem: bool = False,
    pretrained: bool = False,
    weights: str | None = None,
    in_channels: int = 3,
) -> ResNet18:
    """torchvision's resnet18. ``pretrained=True`` loads torchvision's ImageNet weights (from torch's
    hub cache, ``torch.hub.get_dir()``, downloading them when online); ``weights=`` takes a local
    file or state dict instead. With ``num_classes`` other than 1000 the backbone is loaded and a
    fresh ``fc`` is kept, ready for transfer learning."""
    m = ResNet18(num_classes, cifar_stem=cifar_stem, in_channels=in_channels)
    if pretrained or weights is not None:
        sd = weights if isinstance(weights, dict) else _resnet18_weights(weights)
        if cifar_stem or in_channels != 3:
            sd = {k: v for k, v in sd.items() if k != "conv1.weight"}
        if num_classes != 1000:
            sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        m.load_state_dict(sd, strict=False)
    return m


def _resnet18_weights(path: str | None) -> dict:
    if path is None:
        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        path = os.path.join(hub, os.path.basename(RESNET18_URL))
        if not os.path.exists(path):
            try:
                os.makedirs(hub, exist_ok=True)
            except OSError as e:
                raise OSError(
                    f"{hub}: cannot create torch's hub cache folder for the resnet18 weights ({e}); set TORCH_HOME "
                    f"to a writable folder, or pass weights='/path/to/resnet18.pth'"
                ) from e
            try:
                torch.hub.download_url_to_file(RESNET18_URL, path, progress=True)
            except Exception as e:
                raise RuntimeError(
                    f"could not download the resnet18 weights from {RESNET18_URL} ({type(e).__name__}: {e}). Without "
                    f"internet, download that file elsewhere and put it at {path}, "
                    "or pass weights='/path/to/resnet18.pth'"
                ) from e
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (resnet18 weights)")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model_state_dict" in sd:
        sd = sd["model_state_dict"]
    return sd


_ARCHS = {"image_classifier": ImageClassifier, "resnet9": ResNet9, "small_cnn": SmallCNN, "resnet18": ResNet18}
