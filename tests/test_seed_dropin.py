"""The seed tutorial's data and training code, read from the tutorial itself and run verbatim
except for the import line: torchvision's CIFAR10 and torch's DataLoader become fastcifar's. It
keeps its torchvision transforms, its DataLoader arguments and its own loop, and it learns."""

import os
import pickle
import re

import numpy as np
import pytest
import torch

import fastcifar

pytest.importorskip("torchvision")
pytest.importorskip("matplotlib")
SEED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "seed", "image-classification-in-pytorch.txt")


def _block(lines, first, last):
    """The tutorial's lines from the one that is ``first`` to the one that contains ``last``."""
    i = next(k for k, line in enumerate(lines) if line.rstrip() == first)
    j = next(k for k in range(i, len(lines)) if last in lines[k])
    return "\n".join(lines[i : j + 1])


def seed_code() -> str:
    lines = open(SEED).read().splitlines()
    code = "\n\n".join(
        [
            _block(lines, "import torch", 'print(f"Using device: {device}")'),  # imports
            _block(lines, "# Define transforms for training and testing", "'dog', 'frog', 'horse'"),  # data
            _block(lines, "class ImageClassifier(nn.Module):", "Model parameters:"),  # model
            _block(
                lines, "criterion = nn.CrossEntropyLoss()", "torch.save(model.state_dict(), 'best_model.pth')"
            ),  # loop
        ]
    )
    # The drop-in: the import line, and the data set's name.
    swaps = [
        ("from torch.utils.data import DataLoader", "import fastcifar\nfrom fastcifar import DataLoader"),
        ("torchvision.datasets.CIFAR10(", "fastcifar.CIFAR10("),
    ]
    for old, new in swaps:
        assert old in code, old
        code = code.replace(old, new)
    return code


def write_easy_cifar(root, n_train=256, n_test=100):
    """A small CIFAR-10 pickle folder whose classes are learnable in a few steps: each class has
    its own colour, under noise."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (10, 3))
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d)

    def batch(n):
        y = rng.integers(0, 10, n)
        x = np.clip(palette[y][:, :, None, None] + rng.normal(0, 40, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
        return {"data": x.reshape(n, -1), "labels": y.tolist()}

    per = n_train // 5
    for i in range(5):
        pickle.dump(batch(per), open(os.path.join(d, f"data_batch_{i + 1}"), "wb"))
    pickle.dump(batch(n_test), open(os.path.join(d, "test_batch"), "wb"))
    pickle.dump({"label_names": list(fastcifar.CLASSES)}, open(os.path.join(d, "batches.meta"), "wb"))


def test_the_seed_runs_with_only_its_imports_changed_and_learns(tmp_path, monkeypatch, capsys):
    code = seed_code()
    assert "transforms.RandomCrop(32, padding=4)" in code and "num_workers=2" in code  # the seed's own objects
    write_easy_cifar(str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    # Sized for a test: 3 of the recipe's 50 epochs, on 256 images.
    code = code.replace("num_epochs = 50", "num_epochs = 3")
    torch.manual_seed(0)  # the seed does not seed; fastcifar's loaders draw theirs from torch
    ns = {"__name__": "seed"}
    exec(compile(code, "seed_tutorial", "exec"), ns)
    out = capsys.readouterr().out
    accs = [float(a) for a in re.findall(r"Validation Accuracy: ([\d.]+)%", out)]
    assert len(accs) == 3
    assert isinstance(ns["trainset"], fastcifar.CIFAR10) and isinstance(ns["trainloader"], fastcifar.DataLoader)
    assert len(ns["trainloader"]) == 2 and len(ns["testloader"]) == 1
    assert 100 * ns["correct"] / ns["total"] > 50  # the last epoch's training accuracy (chance: 10%)
    assert ns["best_accuracy"] > 30 and accs[-1] > accs[0], out
    assert os.path.exists(tmp_path / "best_model.pth")
