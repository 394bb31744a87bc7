"""Figures for notebooks and reports. Each function returns a matplotlib Figure and never calls
``plt.show()``; in Jupyter the figure displays itself, elsewhere ``fig.savefig(path)``."""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["show_predictions", "plot_history", "plot_confusion_matrix", "show_batch", "save_run_plots"]


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("fastcifar.plot needs matplotlib: pip install matplotlib") from e
    return plt


def _unnormalize(x: torch.Tensor, transform) -> np.ndarray:
    """(C, H, W) float in the transform's normalised units -> (H, W, C) in [0, 1]."""
    from . import transforms as T
    from .transforms.plan import flatten

    x = x.detach().cpu().float()
    for t in reversed(flatten(transform)):
        if isinstance(t, T.Normalize):
            x = x * torch.tensor(t.std).view(-1, 1, 1) + torch.tensor(t.mean).view(-1, 1, 1)
    if x.max() > 1.5:  # raw 0..255 values
        x = x / 255.0
    return x.clamp(0, 1).permute(1, 2, 0).numpy().squeeze()


def _shown_once(fig):
    """pyplot lets the figure go, so a notebook shows it once, through the returned object (the
    inline backend would otherwise draw every open figure at the end of the cell as well)."""
    _plt().close(fig)
    return fig


def _cmap(img) -> str | None:
    """Grayscale images (H, W) or (H, W, 1) in gray, not in matplotlib's default colour map."""
    return "gray" if img.ndim == 2 or img.shape[-1] == 1 else None


def show_predictions(model, dataset, n: int = 8, transform=None, cols: int = 4, seed: int | None = 0):
    """A grid of ``n`` images of ``dataset`` titled "Pred: x / True: y", wrong ones in red.
    ``model`` is a fastcifar Trainer (preferred: it knows the eval transform) or an ``nn.Module``."""
    from .engine.trainer import Trainer

    plt = _plt()
    trainer = model if isinstance(model, Trainer) else None
    idx = (
        np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)), replace=False)
        if seed is not None
        else np.arange(min(n, len(dataset)))
    )
    images = dataset._hwc()[idx] if hasattr(dataset, "_hwc") else dataset.data[idx]
    if trainer is not None:
        pred = trainer.predict(images, transform=transform).cpu().numpy()
    else:
        from . import transforms as T
        from .transforms.plan import transform_batch

        x = transform_batch(images, transform or T.ToTensor())
        device = next(iter(model.parameters()), torch.zeros(())).device
        with torch.no_grad():
            pred = model.eval()(x.to(device)).argmax(1).cpu().numpy()
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax, i, img, p in zip(axes.flat, idx, images, pred):
        true = dataset.targets[i]
        ax.imshow(img.squeeze(), cmap=_cmap(img))
        ok = int(p) == int(true)
        ax.set_title(f"Pred: {dataset.classes[int(p)]}\nTrue: {dataset.classes[true]}", color="black" if ok else "red")
        ax.axis("off")
    for ax in list(axes.flat)[len(idx) :]:
        ax.axis("off")
    fig.tight_layout()
    return _shown_once(fig)


def plot_history(history):
    """Loss and accuracy curves (train and validation) and the learning rate, per epoch."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    h = history.history if hasattr(history, "history") else history
    epochs = h.get("epoch") or list(range(1, len(h["loss"]) + 1))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        ax.plot(epochs, h[key], marker="o", label="train")
        if f"val_{key}" in h:
            ax.plot(epochs, h[f"val_{key}"], marker="o", label="val")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, h["lr"], marker="o", color="tab:green")
    axes[2].set_title("Learning rate")
    axes[2].set_xlabel("epoch")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_yscale("log")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return _shown_once(fig)


def plot_confusion_matrix(report, normalize: bool = True):
    """The confusion matrix of an ``EvalReport`` (rows: true class, columns: predicted)."""
    plt = _plt()
    cm = report.confusion_matrix.astype(float)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(report.classes)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * n, 0.8 + 0.6 * n))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), report.classes, rotation=45, ha="right")
    ax.set_yticks(range(n), report.classes)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(f"Confusion matrix (accuracy {100 * report.accuracy:.2f}%)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]:.2f}" if normalize else int(cm[i, j]),
                    ha="center",
                    va="center",
                    color="white" if cm[i, j] > 0.5 * cm.max() else "black",
                    fontsize=8,
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _shown_once(fig)


def show_batch(loader, n: int = 16, cols: int = 8):
    """The first ``n`` images of a loader's next batch, as augmented (un-normalised for display)."""
    plt = _plt()
    x, y = next(iter(loader))
    n = min(n, len(y))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2 * rows), squeeze=False)
    classes = loader.dataset.classes
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            img = x[k]
            hwc = (
                img.permute(1, 2, 0).numpy().squeeze()
                if img.dtype == torch.uint8
                else _unnormalize(img, loader.transform)
            )
            ax.imshow(hwc, cmap=_cmap(hwc))
            ax.set_title(classes[int(y[k])], fontsize=9)
    fig.tight_layout()
    return _shown_once(fig)


def save_run_plots(trainer, history, report, dataset, out: str) -> list:
    """history.png, confusion_matrix.png and predictions.png under ``out`` (CLI runs)."""
    import matplotlib

    matplotlib.use("Agg")
    plt = _plt()
    names = []
    for name, fig in (
        ("history.png", plot_history(history)),
        ("confusion_matrix.png", plot_confusion_matrix(report)),
        ("predictions.png", show_predictions(trainer, dataset, n=8)),
    ):
        fig.savefig(os.path.join(out, name), dpi=90)
        plt.close(fig)
        names.append(name)
    return names
