"""The one place tests reach inside fastcifar: each function names one internal thing and says
why a test needs it. Everything else in the tests goes through public names."""

from __future__ import annotations

import fastcifar
from fastcifar.data.loader import fast_path


def core():
    """The Rust extension module: tests call its constructors (the core's own checks) and its
    counters (host reads, the CPU's bf16 support) directly."""
    return fastcifar._native


def native_trainer(tr):
    """The trainer's Rust handle: scheduler and lookahead state, process group and fast-math
    switches that no public method shows or sets."""
    return tr._native


def is_graph(tr) -> bool:
    """Whether the trainer's module runs on the Rust graph (not eager PyTorch): the capture's verdict."""
    return tr._compiled.is_graph


def on_engine(tr) -> bool:
    """Whether the trainer's optimizer update runs in Rust (not its own step()): the bridge's verdict."""
    return tr._bridge.on_engine


def native_loader(loader):
    """The Rust loader the trainer runs ``loader`` through (``fast_path``), to draw its epochs and
    batches directly; a TypeError with the reason when there is none."""
    fast = fast_path(loader)
    if isinstance(fast, str):
        raise TypeError(fast)
    return fast


def native_dataset(ds):
    """A data set's Rust side, to check what the loader reads (its targets) after assignments."""
    return ds._native


def fused(transform) -> bool:
    """Whether a Resize-like step runs in the fused Rust pass (its settings decide it)."""
    return transform._native


def stored_native_dataset(ds):
    """A data set's Rust side as it is stored now (no rebuild for pending assignments), to check
    that copies share it."""
    return ds._native_ds


def iteration_loader(loader):
    """The Rust loader a DataLoader iterates (its target_transform not applied), to know an epoch's order."""
    return loader._core


def native_op(transform):
    """A fused transform's Rust op, to check that it pickles (spawn workers receive it so)."""
    return transform._op


def cudnn_benchmark(on: bool):
    """The trainer's context manager for cuDNN's benchmark mode, to check it restores the user's setting."""
    from fastcifar.engine.trainer import _cudnn_benchmark

    return _cudnn_benchmark(on)
