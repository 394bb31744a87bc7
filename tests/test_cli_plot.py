"""The CLI (train / evaluate / predict / info, bad arguments) and the plotting helpers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_cifar10

import fastcifar
from fastcifar import plot


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "fastcifar", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_cifar10(str(root / "data"), n_train=(40, 40, 40, 40, 40), n_test=50, layouts=("bin",))
    out = root / "run"
    r = run(
        "train",
        "--data",
        str(root / "data"),
        "--model",
        "small_cnn",
        "--width",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    return root, out, r.stdout


@pytest.mark.subprocess
def test_train_writes_checkpoint_history_and_plots(tiny_run):
    root, out, stdout = tiny_run
    for f in (
        "best.pth",
        "checkpoint.pth",
        "model_weights.pth",
        "model.safetensors",
        "history.json",
        "history.csv",
        "report.json",
        "history.png",
        "confusion_matrix.png",
        "predictions.png",
    ):
        assert (out / f).exists(), f
    assert "Overall Accuracy" in stdout and "Per-class accuracy" in stdout
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 2
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ck["epoch"] == 2 and set(ck["model_state_dict"]) == set(fastcifar.models.small_cnn(width=4).state_dict())


@pytest.mark.subprocess
def test_evaluate_and_predict(tiny_run, tmp_path):
    root, out, _ = tiny_run
    r = run("evaluate", str(out / "best.pth"), "--data", str(root / "data"), "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["count"] == 50 and len(rep["confusion_matrix"]) == 10
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(img)
    r = run("predict", str(out / "best.pth"), str(img), "--top", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{img}: ") and r.stdout.count("%") == 2


@pytest.mark.subprocess
def test_data_is_found_through_the_environment(tiny_run):
    root, _, _ = tiny_run
    r = run("info", env={"FASTCIFAR_DATA": str(root / "data")})
    assert r.returncode == 0 and "train: 200 images" in r.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "args,match",
    [
        (["train", "--epochs", "0"], "must be a positive integer"),
        (
            ["train", "--model", "vgg"],
            "'vgg' is not one of image_classifier, resnet9, resnet18, small_cnn nor module:Class",
        ),
        (["train", "--lr", "-1"], "must be a positive number"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_are_usage_errors(args, match):
    r = run(*args)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr


@pytest.mark.subprocess
def test_missing_data_and_checkpoint_are_plain_errors(tmp_path):
    r = run("train", "--data", str(tmp_path), "--epochs", "1", env={"FASTCIFAR_DATA": ""})
    assert r.returncode != 0 and "no CIFAR-10 found" in r.stderr + r.stdout and "Traceback" not in r.stderr
    r = run("evaluate", str(tmp_path / "nope.pth"), "--data", str(tmp_path))
    assert r.returncode != 0 and "no such checkpoint or weights file" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad"
    (bad / "cifar-10-batches-bin").mkdir(parents=True)
    (bad / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"short")
    (bad / "cifar-10-batches-bin" / "batches.meta.txt").write_text("\n".join(map(str, range(10))))
    r = run("info", "--data", str(bad))
    assert (
        r.returncode != 0 and "unreadable" in r.stderr and "test_batch.bin" in r.stderr and "Traceback" not in r.stderr
    )
    r = run("predict", str(tmp_path / "nope.pth"), str(tmp_path / "a.png"))
    assert r.returncode != 0 and "no such checkpoint" in r.stderr


@pytest.fixture(scope="module")
def trained():
    ds = fastcifar.Dataset.from_numpy(
        np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
        np.arange(64) % 10,
        classes=[f"class{i}" for i in range(10)],
    )
    t = fastcifar.transforms.Compose(
        [fastcifar.transforms.ToTensor(), fastcifar.transforms.Normalize((0.5,) * 3, (0.25,) * 3)]
    )
    loader = fastcifar.DataLoader(ds, batch_size=16, transform=t)
    tr = fastcifar.Trainer(fastcifar.models.small_cnn(width=4), device="cpu")
    h = tr.fit(loader, loader, epochs=2, progress=False)
    return ds, loader, tr, h


def test_plots_return_figures_with_the_expected_axes(trained):
    import matplotlib

    matplotlib.use("Agg")
    ds, loader, tr, h = trained
    fig = plot.show_predictions(tr, ds, n=8)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 8 and all(t.startswith("Pred: ") and "\nTrue: " in t for t in titles)
    wrong = [ax for ax in fig.axes if ax.get_title() and ax.title.get_color() == "red"]
    assert len(wrong) == sum(t.split("\n")[0][6:] != t.split("\n")[1][6:] for t in titles)
    fig = plot.plot_history(h)
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy", "Learning rate"]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train", "val"]
    rep = tr.evaluate(loader, progress=False)
    fig = plot.plot_confusion_matrix(rep)
    assert fig.axes[0].get_xlabel() == "Predicted" and len(fig.axes[0].get_xticklabels()) == 10
    fig = plot.show_batch(loader, n=8)
    assert sum(1 for ax in fig.axes if ax.get_title()) == 8
    fig = plot.show_predictions(tr.model, ds, n=4, transform=loader.transform)
    assert sum(1 for ax in fig.axes if ax.get_title()) == 4


def test_grayscale_plots_draw_in_gray():
    import matplotlib

    matplotlib.use("Agg")
    ds = fastcifar.Dataset.from_numpy(
        np.random.default_rng(0).integers(0, 256, (32, 28, 28), dtype=np.uint8),
        np.arange(32) % 10,
        classes=[f"class{i}" for i in range(10)],
    )
    t = fastcifar.transforms.Compose([fastcifar.transforms.ToTensor(), fastcifar.transforms.Normalize((0.5,), (0.25,))])
    loader = fastcifar.DataLoader(ds, batch_size=16, transform=t)
    tr = fastcifar.Trainer(fastcifar.models.small_cnn(width=4, in_channels=1), device="cpu")
    tr.fit(loader, epochs=1, progress=False)
    for fig in (
        plot.show_batch(loader, n=4),
        plot.show_predictions(tr, ds, n=4),
        plot.show_predictions(tr.model, ds, n=4, transform=t),
    ):
        images = [im for ax in fig.axes for im in ax.get_images()]
        assert len(images) == 4 and all(im.get_cmap().name == "gray" for im in images)
        assert all(im.get_array().ndim == 2 for im in images)
