"""Each default is written once, in the core's ``impl Default``s, and every Python signature shows
it: ``_native.defaults()`` is torch's defaults, and fastcifar's constructors take theirs from it."""

import inspect

import pytest
import torch

import fastcifar
from fastcifar import _defaults, _native
from fastcifar import optim as fo
from fastcifar.optim import lr_scheduler as fs

TORCH = {
    "SGD": torch.optim.SGD,
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "StepLR": torch.optim.lr_scheduler.StepLR,
    "CosineAnnealingLR": torch.optim.lr_scheduler.CosineAnnealingLR,
    "OneCycleLR": torch.optim.lr_scheduler.OneCycleLR,
    "ReduceLROnPlateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
}
OURS = {
    "SGD": fo.SGD,
    "Adam": fo.Adam,
    "AdamW": fo.AdamW,
    "StepLR": fs.StepLR,
    "CosineAnnealingLR": fs.CosineAnnealingLR,
    "OneCycleLR": fs.OneCycleLR,
    "ReduceLROnPlateau": fs.ReduceLROnPlateau,
    "Lookahead": fo.Lookahead,
    "Trainer": fastcifar.Trainer,
}


def _signature_defaults(cls) -> dict:
    return {
        n: p.default for n, p in inspect.signature(cls).parameters.items() if p.default is not inspect.Parameter.empty
    }


def test_the_cores_defaults_are_torchs():
    core = _native.defaults()
    assert set(core) == set(OURS)
    for name, cls in TORCH.items():
        theirs = _signature_defaults(cls)
        for k, v in core[name].items():
            assert k in theirs, f"{name}.{k} is not a torch argument"
            assert tuple(v) == tuple(theirs[k]) if isinstance(v, tuple) else v == theirs[k], (name, k, v, theirs[k])
    # What torch requires has no default.
    assert "step_size" not in core["StepLR"] and "max_lr" not in core["OneCycleLR"]
    assert "total_steps" not in core["Lookahead"]


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_python_signature_shows_the_cores_default(name):
    mine = _signature_defaults(OURS[name])
    for k, v in _defaults.of(name).items():
        if name == "Adam" and k == "weight_decay":
            # Adam(weight_decay=None) is "the kind's own" (AdamW shares the signature).
            assert mine[k] is None and fo.Adam().settings()[k] == v
            continue
        assert k in mine, f"{name}({k}=...) is missing"
        assert (tuple(mine[k]) == tuple(v)) if isinstance(v, tuple) else mine[k] == v, (name, k, mine[k], v)


def test_absent_settings_take_the_cores_defaults_and_settings_use_the_constructors_names():
    adam = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    assert _native.OptimizerConfig("Adam").settings() == adam
    assert _native.OptimizerConfig("AdamW").settings()["weight_decay"] == 1e-2
    assert fo.Adam(lr=0.1).settings()["betas"] == (0.9, 0.999)
    s = _native.ScheduleConfig("ReduceLROnPlateau", mode="max", threshold_mode="abs").settings()
    assert (s["mode"], s["threshold_mode"], s["patience"]) == ("max", "abs", 10)
    assert _native.ScheduleConfig("ReduceLROnPlateau", **s).settings() == s  # one name each way
    assert fs.ReduceLROnPlateau(mode="max").mode == "max"
    with pytest.raises(ValueError, match=r"mode: 'up' is not 'min' or 'max'"):
        fs.ReduceLROnPlateau(mode="up")
    with pytest.raises(ValueError, match=r"threshold_mode: 'x' is not 'rel' or 'abs'"):
        _native.ScheduleConfig("ReduceLROnPlateau", threshold_mode="x")
    with pytest.raises(TypeError, match=r"gamma: .*\(StepLR\)"):
        _native.ScheduleConfig("StepLR", step_size=1, gamma="half")
    with pytest.raises(ValueError, match="mode: not a setting of StepLR"):
        _native.ScheduleConfig("StepLR", step_size=1, mode="min")
    assert _native.ScheduleConfig("StepLR", step_size=1, mode=None).settings() == {"step_size": 1, "gamma": 0.1}
