"""Whatever a user's model or context does, the engine neither crashes nor leaves torch's state
changed: fit under no_grad / inference_mode, parameters no gradient reaches, layers frozen mid-fit,
labels torch would refuse, graphs gone stale, and grad mode after every public entry point."""

import random
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _internals import is_graph, native_loader
from test_own_module import losses_of, plain_loop

import fastcifar
from fastcifar import optim as fo
from fastcifar import transforms as T

# The torch DataLoaders below feed the engine through Python, which warns (once) that it is slower.
pytestmark = pytest.mark.filterwarnings("ignore:fastcifar. the trainer pulls")

NORM = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])


def synthetic(n=64, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[np.arange(n), :8, :8] = (y * 25)[:, None, None, None]
    return fastcifar.Dataset.from_numpy(x, y, classes=[f"c{i}" for i in range(classes)])


def loader(n=64, bs=16, seed=0):
    return fastcifar.DataLoader(synthetic(n), batch_size=bs, shuffle=True, seed=seed, transform=NORM)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))


class WithAux(nn.Module):
    """The issue's example: a head that never reaches the loss."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3072, 10)
        self.aux = nn.Linear(3072, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Detached(nn.Module):
    """A branch whose output is detached: its parameters get no gradient."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3072, 10)
        self.b = nn.Linear(3072, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.a(x) + self.b(x).detach()


# --- 1. fit inside no_grad / inference_mode / set_grad_enabled(False) ---------------------------------
@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode", "set_grad_enabled"])
def test_fit_inside_a_no_grad_context_trains_and_leaves_the_mode_as_it_was(ctx):
    torch.manual_seed(0)
    m = Tiny()
    before = m.fc.weight.detach().clone()
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), device="cpu", log_every=1)
    make = {
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
        "set_grad_enabled": lambda: torch.set_grad_enabled(False),
    }[ctx]
    with make():
        h = tr.fit(loader(), epochs=1, progress=False)
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == (ctx == "inference_mode")
        tr.evaluate(loader(), progress=False)
        tr.predict(torch.zeros(2, 3, 32, 32))
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert len(h) == 1 and np.isfinite(h[-1]["loss"])
    assert not torch.equal(before, m.fc.weight.detach()), "fit trained"


# --- 2. parameters that no gradient reaches ------------------------------------------------------------
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
        lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3),
    ],
    ids=["sgd", "adam", "rmsprop"],
)
@pytest.mark.parametrize("net", [WithAux, Detached])
def test_unused_parameters_are_skipped_as_torch_skips_them(net, make_opt):
    torch.manual_seed(0)
    ours, theirs = net(), net()
    theirs.load_state_dict(ours.state_dict())
    tr = fastcifar.Trainer(ours, make_opt(ours), device="cpu", log_every=1)
    got = losses_of(tr, loader(), epochs=2)
    want = plain_loop(theirs, make_opt(theirs), loader(), epochs=2)
    assert got == want
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.is_grad_enabled()
    # and the next fit works (it used to crash the process)
    tr.fit(loader(), epochs=1, progress=False)
    assert torch.is_grad_enabled()


def test_unused_parameters_with_fastcifar_optimizers_accumulation_and_clipping():
    torch.manual_seed(0)
    m = WithAux()
    aux = m.aux.weight.detach().clone()
    tr = fastcifar.Trainer(m, fo.Adam(lr=1e-3), device="cpu", grad_accum_steps=2, grad_clip=1.0)
    tr.fit(loader(), epochs=1, progress=False)
    assert torch.equal(aux, m.aux.weight.detach()) and m.aux.weight.grad is None
    assert torch.is_grad_enabled()


def test_a_layer_frozen_between_fits_while_the_optimizer_holds_it():
    torch.manual_seed(0)
    m = Tiny()
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), device="cpu")
    tr.fit(loader(), epochs=1, progress=False)
    m.conv.requires_grad_(False)
    frozen = m.conv.weight.detach().clone()
    tr.fit(loader(), epochs=1, progress=False)
    assert torch.equal(frozen, m.conv.weight.detach())


def test_every_parameter_unused_is_torchs_error_not_a_crash():
    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3072, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)).detach()

    m = Const()
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), device="cpu")
    with pytest.raises(RuntimeError, match="does not require grad"):
        tr.fit(loader(), epochs=1, progress=False)
    assert torch.is_grad_enabled()


# --- 3. freezing from a step callback in the middle of fit -----------------------------------------------
@pytest.mark.parametrize("opt", ["sgd", "rmsprop"])
def test_freezing_a_layer_from_a_step_callback_goes_on_as_a_plain_loop_does(opt):
    torch.manual_seed(0)
    ours, theirs = Tiny(), Tiny()
    theirs.load_state_dict(ours.state_dict())

    def make(m):
        if opt == "sgd":
            return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        return torch.optim.RMSprop(m.parameters(), lr=1e-3)

    tr = fastcifar.Trainer(ours, make(ours), device="cpu", log_every=1)

    def freeze_after_two(info):
        if info["phase"] == "step" and info["step"] == 2:
            ours.conv.requires_grad_(False)

    got = []
    tr.fit(
        loader(),
        epochs=1,
        progress=False,
        callbacks=[freeze_after_two, lambda i: got.append(i["batch_loss"]) if i["phase"] == "step" else None],
    )
    # the plain loop freezes at the same point (after its second step)
    crit, want, o = nn.CrossEntropyLoss(), [], make(theirs)
    for s, (x, y) in enumerate(native_loader(loader()).epoch(0)):
        o.zero_grad()
        loss = crit(theirs(x), y)
        loss.backward()
        o.step()
        want.append(loss.item())
        if s == 1:
            theirs.conv.requires_grad_(False)  # the next zero_grad() sets its .grad to None
    assert got == want
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)


# --- 10. labels torch would refuse -----------------------------------------------------------------------
def torch_loader(labels):
    x = torch.randn(8, 3, 32, 32)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=4)


@pytest.mark.parametrize(
    "labels, exc, match",
    [
        (torch.tensor([1, 2, 3, 99, 0, 1, 2, 3]), IndexError, r"Target 99 is out of bounds.*10 classes"),
        (torch.tensor([1, 2, 3, -1, 0, 1, 2, 3]), IndexError, r"Target -1 is out of bounds"),
        (
            torch.tensor([1.0, 2, 3, 4, 0, 1, 2, 3]),
            RuntimeError,
            r"expected scalar type Long but found Float.*long\(\)",
        ),
        (torch.tensor([[1], [2], [3], [4], [0], [1], [2], [3]]), RuntimeError, r"multi-target not supported.*squeeze"),
        (torch.tensor([1, 2, 3, 4, 0, 1, 2, 3], dtype=torch.int32), RuntimeError, r"expected scalar type Long"),
    ],
    ids=["too-large", "negative", "float", "b-by-1", "int32"],
)
def test_labels_torch_refuses_get_torchs_exception_without_cpp_frames(labels, exc, match):
    m = Tiny()
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), device="cpu")
    with pytest.raises(exc, match=match) as e:
        tr.fit(torch_loader(labels), epochs=1, progress=False)
    assert "c10::" not in str(e.value) and "frame #" not in str(e.value)
    with pytest.raises(exc, match=match):
        tr.evaluate(torch_loader(labels), progress=False)
    assert torch.is_grad_enabled()


def test_labels_torch_accepts_still_train():
    m = Tiny()
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), device="cpu")
    tr.fit(torch_loader(torch.tensor([1, 2, 3, 4, 0, 1, 2, 3], dtype=torch.uint8)), epochs=1, progress=False)
    # -100 is cross_entropy's ignore_index in training
    tr.fit(torch_loader(torch.tensor([1, -100, 3, 4, 0, 1, 2, 3])), epochs=1, progress=False)


# --- 7. graphs gone stale ----------------------------------------------------------------------------------
ACT = "relu"


class Configurable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3072, 16)
        self.fc2 = nn.Linear(16, 10)
        self.cfg = {"act": "relu"}
        self.act = torch.relu

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        h = torch.tanh(h) if self.cfg["act"] == "tanh" else self.act(h)
        h = torch.sigmoid(h) if ACT == "sigmoid" else h
        return self.fc2(h)


def agree(tr, m, x):
    m.eval()
    with torch.no_grad():
        return torch.allclose(tr.predict_logits(x), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change", ["dict", "function", "global", "class-forward"])
def test_a_changed_setting_the_forward_reads_is_captured_again(change):
    global ACT
    torch.manual_seed(0)
    m = Configurable()
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), device="cpu")
    x = torch.randn(4, 3, 32, 32)
    assert agree(tr, m, x)
    saved_forward = Configurable.forward
    try:
        if change == "dict":
            m.cfg["act"] = "tanh"
        elif change == "function":
            m.act = torch.tanh
        elif change == "global":
            ACT = "sigmoid"
        else:
            Configurable.forward = lambda self, x: self.fc2(torch.tanh(self.fc1(x.flatten(1))))
        assert agree(tr, m, x), "predict follows the module"
        tr.fit(loader(16), epochs=1, progress=False)
        assert agree(tr, m, x)
    finally:
        ACT = "relu"
        Configurable.forward = saved_forward


HELPER_STATE = types.SimpleNamespace(scale=1.0)


def _helper(h):
    return h * HELPER_STATE.scale


class ReadsThroughAHelper(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3072, 10)

    def forward(self, x):
        return _helper(self.fc(x.flatten(1)))


def test_state_the_fingerprint_cannot_see_is_caught_by_the_sample_check():
    m = ReadsThroughAHelper()
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), device="cpu")
    x = torch.randn(4, 3, 32, 32)
    tr.predict(x)
    try:
        HELPER_STATE.scale = 3.0
        assert agree(tr, m, x)
    finally:
        HELPER_STATE.scale = 1.0


def test_a_module_random_in_eval_mode_falls_back_to_its_own_forward_with_a_warning():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3072, 10)

        def forward(self, x):
            # Python's own random draw: the trace bakes one value in, eager draws anew.
            return self.fc(x.flatten(1)) * (1.0 + random.random())

    m = Noisy()
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), device="cpu")
    with pytest.warns(UserWarning, match="does not give what its own forward gives"):
        tr.predict(torch.randn(2, 3, 32, 32))
    assert not is_graph(tr)


# --- grad mode after every public entry point --------------------------------------------------------------
def entry_points(tmp_path):
    m = Tiny()
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), device="cpu")
    good = loader()
    bad_labels = torch_loader(torch.tensor([1, 2, 3, 99, 0, 1, 2, 3]))

    def failing_callback(info):
        raise ValueError("callback failed")

    return [
        ("fit", lambda: tr.fit(good, epochs=1, progress=False), None),
        ("fit-bad-labels", lambda: tr.fit(bad_labels, epochs=1, progress=False), IndexError),
        (
            "fit-callback-error",
            lambda: tr.fit(good, epochs=1, progress=False, callbacks=[failing_callback]),
            ValueError,
        ),
        ("evaluate", lambda: tr.evaluate(good, progress=False), None),
        ("evaluate-bad", lambda: tr.evaluate(bad_labels, progress=False), IndexError),
        ("predict", lambda: tr.predict(torch.zeros(2, 3, 32, 32)), None),
        ("predict-bad", lambda: tr.predict(torch.zeros(2, 1, 32, 32)), ValueError),
        ("predict_proba", lambda: tr.predict_proba(torch.zeros(2, 3, 32, 32)), None),
        ("save", lambda: tr.save(tmp_path / "c.pth"), None),
        ("load", lambda: fastcifar.Trainer.load(tmp_path / "c.pth", model=Tiny(), device="cpu"), None),
        ("loader-iter", lambda: next(iter(good)), None),
    ]


@pytest.mark.parametrize("mode", [True, False])
def test_every_entry_point_leaves_grad_mode_as_it_found_it(tmp_path, mode):
    import warnings

    for name, call, exc in entry_points(tmp_path):
        with torch.set_grad_enabled(mode), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exc is None:
                call()
            else:
                with pytest.raises(exc):
                    call()
            assert torch.is_grad_enabled() == mode, name
    assert torch.is_grad_enabled()


def test_history_indexes_like_a_list_and_names_unknown_keys():
    m = Tiny()
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), device="cpu")
    h = tr.fit(loader(), epochs=2, progress=False)
    assert h[-1]["epoch"] == 2 and [r["epoch"] for r in h[1:]] == [2]
    assert h["epoch"] == [1, 2]
    with pytest.raises(KeyError, match="'nope': no epoch recorded it.*loss"):
        h["nope"]
    with pytest.raises(TypeError, match="str .a metric., int or slice"):
        h[1.5]
