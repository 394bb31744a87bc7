"""The plain PyTorch modules of fastcifar's built-in networks.

Since fastcifar 0.2 the built-ins *are* plain ``torch.nn.Module`` classes, defined once in
``fastcifar.models``; this module keeps the names that earlier code imported.
"""

import torch.nn as nn

from .models import ImageClassifier, Module, ResNet9, ResNet18, SmallCNN

__all__ = ["ImageClassifier", "ResNet9", "SmallCNN", "resnet18", "build"]


def resnet18(num_classes=1000, cifar_stem=False):
    return ResNet18(num_classes, cifar_stem=cifar_stem)


def build(config: dict) -> nn.Module:
    """The module for a built-in's ``config``."""
    return Module.from_config(config)
