"""A torch-style parameter group's settings as the Rust update takes them: the seam between
``torch.optim`` / ``fastcifar.optim`` parameter groups and the engine's ``OptimizerConfig``.

fastcifar's optimizers build their settings with these, and the trainer's bridge (engine/bridge.py)
and the range test (engine/lr_find.py) use them for torch.optim's optimizers on the engine.
"""

from __future__ import annotations

import torch

from .. import _native as _rs

__all__ = ["hyper_value", "engine_config", "momentum_of"]


def hyper_value(v):
    """A hyper-parameter as its value: torch takes 1-element tensors for them (``lr=torch.tensor(0.1)``);
    anything else is returned as it is (for the core's checks, which name the setting)."""
    return v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v


def engine_config(name: str, group: dict, written: bool = False) -> _rs.OptimizerConfig:
    """A torch-style param group's settings for the Rust update of ``name`` ("SGD", "Adam" or
    "AdamW"). The core checks them (as torch's constructor does; settings ``written`` between steps
    are checked when the loop applies them)."""
    # A setting the group lacks is None: the core takes its default (torch's).
    make = _rs.OptimizerConfig.written if written else _rs.OptimizerConfig
    lr, wd = hyper_value(group["lr"]), hyper_value(group.get("weight_decay"))
    if name == "SGD":
        nesterov = group.get("nesterov")
        return make(
            name,
            lr=lr,
            momentum=hyper_value(group.get("momentum")),
            dampening=hyper_value(group.get("dampening")),
            weight_decay=wd,
            nesterov=None if nesterov is None else bool(nesterov),
        )
    betas = group.get("betas")
    return make(
        name,
        lr=lr,
        betas=None if betas is None else (hyper_value(betas[0]), hyper_value(betas[1])),
        eps=hyper_value(group.get("eps")),
        weight_decay=wd,
    )


def momentum_of(group: dict) -> float:
    """SGD's momentum or Adam's beta1 in a param group (0.0 when it has neither)."""
    return float(hyper_value(group["betas"][0] if "betas" in group else group.get("momentum", 0.0)))
