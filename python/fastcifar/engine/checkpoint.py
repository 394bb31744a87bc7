"""Checkpoints: how one names its optimizer and schedule, rebuilding them for ``Trainer.load``,
refusing one whose optimizer or schedule differs from the trainer's, and reading the file."""

from __future__ import annotations

import os
from typing import Any

import torch

from .. import optim as _optim

CHECKPOINT_VERSION = 1


def describe(obj, model: torch.nn.Module | None = None) -> dict | None:
    """How a checkpoint names the optimizer or schedule (to rebuild it in Trainer.load): fastcifar's
    by name and settings; torch's by class, with the arguments that construct it again (an
    optimizer's defaults and, given ``model``, its groups by parameter name)."""
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
        out["defaults"] = {k: v for k, v in obj.defaults.items() if _plain(v)}
        if model is not None and len(obj.param_groups) > 1:
            # Which parameters each group holds, by name; load_state_dict restores each group's settings.
            names = {id(p): n for n, p in model.named_parameters()}
            groups = [[names.get(id(p)) for p in g["params"]] for g in obj.param_groups]
            if all(n is not None for g in groups for n in g):
                out["group_params"] = groups
    elif isinstance(obj, torch.optim.lr_scheduler.LRScheduler) or hasattr(obj, "state_dict"):
        args = _schedule_args(obj)
        if args is not None:
            out["args"] = args
    return out


def _plain(v) -> bool:
    """A value that ``torch.load(weights_only=True)`` reads back (no classes, no functions)."""
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return isinstance(v, (bool, int, float, str, type(None)))


_NOT_ARGS = ("self", "optimizer", "last_epoch", "verbose")


def _schedule_args(sched) -> dict | None:
    """The constructor arguments of a torch schedule, recovered from what it holds: an attribute
    of the argument's name (``step_size``), its per-group list (``min_lrs``) or the optimizer
    group's entry (OneCycleLR's ``max_lr``). Only enough to construct it again: its
    ``state_dict`` (loaded after) restores the rest. None when a required argument is not there
    (a lambda, the schedules inside SequentialLR): ``Trainer.load`` then asks for it by name."""
    import collections
    import inspect

    try:
        params = inspect.signature(type(sched).__init__).parameters.values()
        held = dict(sched.state_dict())
    except (TypeError, ValueError, AttributeError):
        return None
    groups = getattr(getattr(sched, "optimizer", None), "param_groups", None) or []
    args: dict[str, Any] = {}
    for p in params:
        if p.name in _NOT_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        v: Any = held.get(p.name, held.get(p.name + "s"))
        if v is None and groups and all(p.name in g for g in groups):
            v = [g[p.name] for g in groups]
        if isinstance(v, collections.Counter):  # MultiStepLR's milestones
            v = sorted(v.elements())
        if v is not None and _plain(v):
            args[p.name] = list(v) if isinstance(v, tuple) else v
        elif p.default is p.empty:
            return None
    return args


def _torch_class(path: str, src):
    import importlib

    module, _, name = path.rpartition(".")
    if not module.startswith("torch.optim"):
        return None
    return getattr(importlib.import_module(module), name, None)


def _group_tensors(model: torch.nn.Module, groups: list, src) -> list:
    """Each group's parameters, from the names a checkpoint holds."""
    named = dict(model.named_parameters())
    missing = [n for names in groups for n in names if n not in named]
    if missing:
        raise ValueError(f"{src}: its optimizer's groups name parameters the model does not have: {missing[:3]}")
    return [[named[n] for n in names] for names in groups]


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
        params: Any = model.parameters()
        if meta.get("group_params"):
            params = [{"params": ps} for ps in _group_tensors(model, meta["group_params"], src)]
        return cls(params, **meta.get("defaults", {}))
    s = dict(meta["settings"])  # by the names the constructor takes (``settings()``)
    if meta.get("groups"):
        # Parameter groups by parameter name: each group's rate is its multiple of the optimizer's.
        tensors = _group_tensors(model, [names for names, _, _ in meta["groups"]], src)
        s["params"] = [
            {"params": ps, "lr": s["lr"] * scale, "weight_decay": wd}
            for ps, (_, scale, wd) in zip(tensors, meta["groups"])
        ]
    return {"SGD": _optim.SGD, "Adam": _optim.Adam, "AdamW": _optim.AdamW}[meta["name"]](**s)


def rebuild_schedule(meta: dict, src, optimizer=None):
    """The schedule a checkpoint names: fastcifar's from its settings; torch's constructed again on
    ``optimizer`` from the recorded arguments (its state_dict, loaded after, restores the rest)."""
    if "torch" in meta:
        cls = _torch_class(meta["torch"], src)
        fix = "pass it (built on the optimizer you pass): Trainer.load(path, optimizer=..., scheduler=...)"
        if cls is None or meta.get("args") is None or not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"{src}: was trained with {meta['torch']}, whose arguments a checkpoint does not hold; {fix}"
            )
        try:
            return cls(optimizer, **meta["args"])
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(
                f"{src}: {meta['torch']} cannot be built again from its recorded arguments ({e}); {fix}"
            ) from e
    return _optim.lr_scheduler._restore(meta["name"], meta["settings"])


def model_class(model: torch.nn.Module) -> str | None:
    """``module:qualname`` of a module's class, when an import can find it again (not __main__'s,
    not a class defined inside a function)."""
    cls = type(model)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def import_model(spec: str, src, **kwargs) -> torch.nn.Module:
    """An instance of ``module:Class`` (the class a checkpoint names, or ``--model``'s), built with
    ``kwargs`` it takes (none required otherwise)."""
    import importlib
    import inspect

    module, _, qual = spec.partition(":")
    fix = "pass the model: Trainer.load(path, model=YourModule(...))"
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{src}: its model class {spec} cannot be imported ({e}); {fix}") from None
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        raise ValueError(f"{src}: {spec} is not a torch.nn.Module class")
    try:
        accepted = inspect.signature(obj).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        kw = {k: v for k, v in kwargs.items() if takes_any or k in accepted}
        return obj(**kw)
    except TypeError as e:
        raise ValueError(f"{src}: {spec}() cannot be built without arguments ({e}); {fix}") from None


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
        moving = _cycled(meta.get("scheduler"))
        _same_settings("optimizer", _kind(mine), _hyper(saved, moving), _hyper(mine, moving), fix)
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


def _cycled(schedule: dict | None) -> bool:
    """Whether a fastcifar OneCycleLR moves the momentum (SGD's, or Adam's first beta) every step
    (``cycle_momentum``): then it is state, like the learning rate, not a setting to compare."""
    return bool(
        schedule and schedule.get("name") == "OneCycleLR" and (schedule.get("settings") or {}).get("cycle_momentum")
    )


def _hyper(desc: dict, moving: bool = False) -> dict:
    """A description's hyper-parameters, the learning rate (and the momentum a schedule moves)
    left out: they are state."""
    d = desc.get("settings", desc.get("defaults", {})) or {}
    d = {k: v for k, v in d.items() if k not in ("lr", "initial_lr") and not (moving and k == "momentum")}
    if moving and isinstance(d.get("betas"), (list, tuple)):
        d["betas"] = tuple(d["betas"])[1:]  # the second beta stays a setting
    return d


def checkpoint_paths(path) -> tuple[str, str]:
    """``fit(checkpoint=path)``'s two files: ``path`` itself for the best weights (a plain
    state_dict, as the tutorial saves it) and ``<stem>.ckpt<ext>`` beside it for the full,
    resumable checkpoint (``best_model.pth`` -> ``best_model.ckpt.pth``)."""
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    return path, f"{root}.ckpt{ext or '.pth'}"


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
