"""Checkpoints: how one names its optimizer and schedule, rebuilding them for ``Trainer.load``,
refusing one whose optimizer or schedule differs from the trainer's, and reading the file."""

from __future__ import annotations

import os
from typing import Any

import torch

from . import optim as _optim

CHECKPOINT_VERSION = 1


def describe(obj) -> dict | None:
    """How a checkpoint names the optimizer or schedule (to rebuild it in Trainer.load)."""
    if obj is None:
        return None
    if isinstance(obj, _optim.Optimizer):
        groups = obj._group_spec()
        return {"name": obj.name, "settings": obj.settings(), **({"groups": groups} if groups else {})}
    if isinstance(obj, _optim.lr_scheduler._Schedule):
        return {"name": obj.name, "settings": obj.settings()}
    cls = type(obj)
    out: dict[str, Any] = {"torch": f"{cls.__module__}.{cls.__qualname__}"}
    if isinstance(obj, torch.optim.Optimizer):
        out["defaults"] = {
            k: v for k, v in obj.defaults.items() if isinstance(v, (bool, int, float, str, tuple, type(None)))
        }
    return out


def _torch_class(path: str, src):
    import importlib

    module, _, name = path.rpartition(".")
    if not module.startswith("torch.optim"):
        return None
    return getattr(importlib.import_module(module), name, None)


def rebuild_optimizer(meta: dict | None, model: torch.nn.Module, src):
    if not meta:
        return None
    if "torch" in meta:
        cls = _torch_class(meta["torch"], src)
        if cls is None:
            raise ValueError(
                f"{src}: was trained with {meta['torch']}, which a checkpoint cannot rebuild; pass it: "
                f"Trainer.load(path, optimizer=...)"
            )
        return cls(model.parameters(), **meta.get("defaults", {}))
    s = dict(meta["settings"])
    if "beta1" in s:
        s["betas"] = (s.pop("beta1"), s.pop("beta2"))
    if "nesterov" in s:
        s["nesterov"] = bool(s["nesterov"])
    if meta.get("groups"):
        # Parameter groups by parameter name: each group's rate is its multiple of the optimizer's.
        named = dict(model.named_parameters())
        missing = [n for names, _, _ in meta["groups"] for n in names if n not in named]
        if missing:
            raise ValueError(f"{src}: its optimizer's groups name parameters the model does not have: {missing[:3]}")
        s["params"] = [
            {"params": [named[n] for n in names], "lr": s["lr"] * scale, "weight_decay": wd}
            for names, scale, wd in meta["groups"]
        ]
    return {"SGD": _optim.SGD, "Adam": _optim.Adam, "AdamW": _optim.AdamW}[meta["name"]](**s)


def rebuild_schedule(meta: dict, src):
    if "torch" in meta:
        raise ValueError(
            f"{src}: was trained with {meta['torch']}, whose arguments a checkpoint does not hold; pass it "
            f"(built on the optimizer you pass): Trainer.load(path, optimizer=..., scheduler=...)"
        )
    return _optim.lr_scheduler._restore(meta["name"], meta["settings"])


def check_same_optimizer(ckpt: dict, optimizer, scheduler) -> None:
    """Refuses a checkpoint whose optimizer or schedule differs from the trainer's in kind or
    hyper-parameters: loading one into the other would keep the wrong update rule, lose moment
    buffers and make the settings disagree with what runs. The learning rate is state (schedules
    move it), not a setting: the checkpoint's is loaded."""
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint: expected a dict, got {type(ckpt).__name__}")
    meta = ckpt.get("fastcifar") or {}
    fix = (
        "build the trainer from the checkpoint with fastcifar.Trainer.load(path), "
        "or load only the weights with model.load_state_dict"
    )
    mine = describe(optimizer)
    saved = meta.get("optimizer")
    if saved is not None:
        if _kind(saved) != _kind(mine):
            raise ValueError(f"checkpoint: optimizer is {_kind(saved)}, this trainer's is {_kind(mine)}; {fix}")
        assert mine is not None  # the trainer's optimizer: never None (Bridge refuses it)
        _same_settings("optimizer", _kind(mine), _hyper(saved), _hyper(mine), fix)
        _same_settings("optimizer", _kind(mine), _group_shape(saved), _group_shape(mine), fix)
    else:
        # A checkpoint without fastcifar's entry (torch's format): its param group tells the kind.
        try:
            group = dict(ckpt["optimizer_state_dict"]["param_groups"][0])
        except (KeyError, IndexError, TypeError, ValueError):
            group = {}  # malformed: optimizer.load_state_dict names the problem below
        kind = "Adam" if "betas" in group else "SGD" if "momentum" in group else None
        own = optimizer.param_groups[0]
        if kind is not None and (kind == "Adam") != ("betas" in own):
            raise ValueError(
                f"checkpoint: optimizer state is {'Adam-like (betas)' if kind == 'Adam' else 'SGD (momentum)'}, "
                f"this trainer's optimizer is {_kind(mine)}; {fix}"
            )
    if "scheduler" in meta:
        saved, theirs = meta["scheduler"], describe(scheduler)
        if _kind(saved) != _kind(theirs):
            raise ValueError(f"checkpoint: schedule is {_kind(saved)}, this trainer's is {_kind(theirs)}; {fix}")
        if saved is not None:
            if theirs is None:  # an entry naming no schedule (a hand-made file): it is not "no schedule"
                raise ValueError(f"checkpoint: has a schedule's settings, this trainer has no scheduler; {fix}")
            _same_settings("scheduler", _kind(theirs), _hyper(saved), _hyper(theirs), fix)
    elif ckpt.get("scheduler_state_dict") is not None and scheduler is None:
        raise ValueError(f"checkpoint: has a schedule's state, this trainer has no scheduler; {fix}")


def _same_settings(what: str, name: str | None, saved: dict, mine: dict, fix: str) -> None:
    def same(a, b) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    diff = [
        f"{k}={saved.get(k)!r} (this trainer: {mine.get(k)!r})"
        for k in sorted(set(saved) | set(mine))
        if not same(saved.get(k), mine.get(k))
    ]
    if diff:
        raise ValueError(f"checkpoint: {what} {name} was saved with {', '.join(diff)}; {fix}")


def _group_shape(desc: dict) -> dict:
    """A description's parameter groups as settings: per group its size, rate multiple and weight
    decay (the parameters' names may differ between two equal models)."""
    return {"groups": [[len(names), scale, wd] for names, scale, wd in desc.get("groups") or []]}


def _kind(desc: dict | None) -> str | None:
    return None if desc is None else desc.get("name", desc.get("torch"))


def _hyper(desc: dict) -> dict:
    """A description's hyper-parameters, the learning rate left out (it is state)."""
    d = desc.get("settings", desc.get("defaults", {})) or {}
    return {k: v for k, v in d.items() if k not in ("lr", "initial_lr")}


def to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def read_checkpoint(path) -> dict:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint (no 'model_state_dict')")
    return ckpt
