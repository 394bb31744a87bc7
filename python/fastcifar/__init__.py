"""fastcifar: CIFAR-10 data, augmentation and training for PyTorch, with the hot loops in Rust.

import fastcifar
from fastcifar import transforms as T

train = fastcifar.CIFAR10("./data", train=True, transform=T.Compose([
    T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(),
    T.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))]))
loader = fastcifar.DataLoader(train, batch_size=128, shuffle=True)
model = fastcifar.models.ImageClassifier()
trainer = fastcifar.Trainer(model, optimizer=fastcifar.optim.Adam(lr=1e-3, weight_decay=1e-4))
history = trainer.fit(loader, epochs=10)
"""

TORCH_VERSION = "2.11.0"

try:
    # torch first: the native module links to the libtorch that this torch provides.
    import torch
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"fastcifar needs torch=={TORCH_VERSION}: pip install torch=={TORCH_VERSION}") from e

if torch.__version__.split("+")[0] != TORCH_VERSION:
    raise ImportError(
        f"fastcifar was built against torch {TORCH_VERSION}, but torch {torch.__version__} is installed; "
        f"install the matching torch with: pip install torch=={TORCH_VERSION}"
    )

# After the torch check (E402 is ignored for this file in pyproject.toml).
import sys

from . import _native, callbacks, distributed, loggers, models, optim, plot, recipes, transforms
from .data import datasets
from .data.datasets import CIFAR10, CIFAR100, MNIST, SVHN, Dataset, DecompressionBombError, FashionMNIST, ImageFolder
from .data.loader import DataLoader
from .engine import trainer
from .engine.trainer import EvalReport, History, ScheduleHorizonError, Trainer

# Public module paths the README shows for modules that live in a sub-package
# (``fastcifar.datasets.MAX_IMAGE_PIXELS``, ``fastcifar.trainer.ScheduleHorizonError``): importable by
# those names too.
sys.modules[f"{__name__}.datasets"] = datasets
sys.modules[f"{__name__}.trainer"] = trainer

# Cargo.toml's version, compiled into the extension: the same as the wheel's metadata (pyproject.toml
# takes it from Cargo.toml), and right in a source tree too.
__version__: str = _native.__version__
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "ImageFolder",
    "MNIST",
    "FashionMNIST",
    "SVHN",
    "Dataset",
    "DecompressionBombError",
    "DataLoader",
    "Trainer",
    "History",
    "EvalReport",
    "ScheduleHorizonError",
    "models",
    "optim",
    "callbacks",
    "loggers",
    "plot",
    "recipes",
    "transforms",
    "distributed",
    "TORCH_VERSION",
    "__version__",
]
