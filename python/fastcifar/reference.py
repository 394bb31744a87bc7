"""Plain PyTorch modules equivalent to fastcifar's models, key for key.

``fastcifar.models.X().state_dict()`` loads into these with ``strict=True`` and gives the same
logits. They need nothing but torch (resnet18 uses torchvision's when it is installed).
"""
import torch
import torch.nn as nn

__all__ = ["ImageClassifier", "ResNet9", "SmallCNN", "resnet18", "build"]


class ImageClassifier(nn.Module):
    """The seed tutorial's network, verbatim."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, padding=1)
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
        self.fc1 = nn.Linear(256 * 4 * 4, 512)
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


def _cbr(cin, cout, pool=False):
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class ResNet9(nn.Module):
    """DAWNBench ResNet-9 (Myrtle.ai)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.prep = nn.Sequential(*_cbr(3, 64))
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


class SmallCNN(nn.Module):
    def __init__(self, num_classes=10, width=32):
        super().__init__()
        w = width
        self.conv1, self.bn1 = nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.conv2, self.bn2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.conv3, self.bn3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18(num_classes=1000, cifar_stem=False):
    """torchvision's resnet18 (its own code when torchvision is installed)."""
    import torchvision

    m = torchvision.models.resnet18(num_classes=num_classes)
    if cifar_stem:
        m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
    return m


def build(config: dict) -> nn.Module:
    """The module for a fastcifar ``Model.config``."""
    cfg = dict(config)
    arch = cfg.pop("arch")
    return {"image_classifier": ImageClassifier, "resnet9": ResNet9, "small_cnn": SmallCNN, "resnet18": resnet18}[arch](**cfg)
