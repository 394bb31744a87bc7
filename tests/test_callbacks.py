"""What Lightning and fastai users reach for (issue 24 point 5): EarlyStopping and ModelCheckpoint
on fit's callbacks, Trainer.lr_find on the Rust loop, and TensorBoardLogger (through a stand-in
SummaryWriter: tensorboard is not a test dependency; its absence is tested for real)."""

import importlib.util
import math
import os
import sys
import types

import numpy as np
import pytest
import torch

# The labelled synthetic images (a learnable corner patch) and the usual normalisation.
from test_torch_optim import NORM, synthetic

import fastcifar
from fastcifar import models
from fastcifar.callbacks import EPOCH_KEYS, VAL_KEYS, EarlyStopping, ModelCheckpoint
from fastcifar.optim import SGD, Adam


def loader(n=64, seed=1, shuffle=True):
    return fastcifar.DataLoader(synthetic(n, seed), batch_size=16, shuffle=shuffle, seed=seed, transform=NORM)


def net(seed=0):
    torch.manual_seed(seed)
    return models.small_cnn(10, width=8)


def trainer(model=None, optimizer=None, **kw):
    return fastcifar.Trainer(
        model if model is not None else net(), optimizer=optimizer or Adam(lr=1e-3), device="cpu", **kw
    )


def epoch(**record):
    return dict(record, phase="epoch")


# --- the monitor names are the history's ----------------------------------------------------------
def test_history_keys_are_the_ones_monitors_name():
    tr = trainer()
    h = tr.fit(loader(), loader(32, seed=2, shuffle=False), epochs=1, progress=False)
    assert tuple(h[-1]) == EPOCH_KEYS + VAL_KEYS
    h = trainer().fit(loader(), epochs=1, progress=False)
    assert tuple(h[-1]) == EPOCH_KEYS


def test_unknown_monitor_is_refused_naming_the_keys_before_training():
    tr = trainer()
    with pytest.raises(ValueError, match=r"monitor='val_acc'.*did you mean 'val_accuracy'.*records: loss, accuracy"):
        tr.fit(loader(), loader(32, 2), epochs=1, progress=False, callbacks=[EarlyStopping(monitor="val_acc")])
    with pytest.raises(ValueError, match=r"'val_loss'.*only with a val_loader"):
        tr.fit(loader(), epochs=1, progress=False, callbacks=[ModelCheckpoint(monitor="val_loss")])
    with pytest.raises(ValueError, match=r"\{acc\} is not a field.*val_accuracy, step"):
        tr.fit(loader(), loader(32, 2), epochs=1, progress=False, callbacks=[ModelCheckpoint(filename="{acc}")])
    assert tr.epoch == 0 and len(tr.history) == 0
    # strict=False: a missing monitor warns and the callback stands aside.
    es = EarlyStopping(monitor="val_loss", strict=False, patience=0)
    with pytest.warns(UserWarning, match="strict=False"):
        tr.fit(loader(), epochs=2, progress=False, callbacks=[es])
    assert tr.epoch == 2


def test_lightning_arguments_without_a_counterpart_are_refused_by_name():
    with pytest.raises(ValueError, match="check_on_train_epoch_end=...\\): not supported"):
        EarlyStopping(check_on_train_epoch_end=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'paitence'"):
        EarlyStopping(paitence=3)
    with pytest.raises(ValueError, match="every_n_train_steps"):
        ModelCheckpoint(every_n_train_steps=10)
    with pytest.raises(ValueError, match="enable_version_counter"):
        ModelCheckpoint(enable_version_counter=True)
    with pytest.raises(ValueError, match="mode='auto'"):
        EarlyStopping(mode="auto")
    with pytest.raises(ValueError, match="patience=-1"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="save_top_k=3, monitor=None"):
        ModelCheckpoint(save_top_k=3)
    with pytest.raises(ValueError, match="save_top_k=-2"):
        ModelCheckpoint(monitor="loss", save_top_k=-2)
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        ModelCheckpoint(every_n_epochs=0)
    with pytest.raises(ValueError, match="save_last='link'"):
        ModelCheckpoint(save_last="link")


# --- EarlyStopping ------------------------------------------------------------------------------------
def fed(cb, values, key="val_loss"):
    """Feeds ``values`` as epoch records; returns the epoch at which it asked to stop (or None)."""
    cb.on_fit_start(None, EPOCH_KEYS + VAL_KEYS)
    for i, v in enumerate(values, 1):
        assert cb({"phase": "step", "epoch": i - 1, key: 0.0}) is None  # steps never stop it
        if cb(epoch(epoch=i, **{key: v})) is False:
            return i
    return None


def test_early_stopping_patience_min_delta_mode_and_thresholds():
    assert fed(EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.91]) == 4
    assert fed(EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.8, 0.85, 0.7]) is None  # the count restarts
    # A change of min_delta or less is no improvement.
    assert fed(EarlyStopping(patience=1, min_delta=0.1), [1.0, 0.9]) == 2
    assert fed(EarlyStopping(patience=1, min_delta=0.1), [1.0, 0.89]) is None
    es = EarlyStopping(monitor="val_accuracy", mode="max", patience=1)
    assert fed(es, [0.5, 0.6, 0.6], key="val_accuracy") == 3
    assert es.best_score == 0.6 and es.stopped_epoch == 3 and es.wait_count == 1
    assert fed(EarlyStopping(patience=9, stopping_threshold=0.5), [1.0, 0.7, 0.5, 0.4]) == 3
    assert fed(EarlyStopping(patience=9, divergence_threshold=2.0), [1.0, 1.5, 2.5]) == 3
    es = EarlyStopping(patience=9)
    assert fed(es, [1.0, math.nan]) == 2 and "not finite" in es.stop_reason
    assert fed(EarlyStopping(patience=9, check_finite=False), [1.0, math.nan, 0.9]) is None


def test_early_stopping_stops_fit(capsys):
    # lr=0: only BatchNorm's statistics move the validation loss (by far less than min_delta), so
    # patience=2 stops after epoch 3.
    tr = trainer(optimizer=SGD(lr=0.0))
    es = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.05, verbose=True)
    h = tr.fit(loader(32), loader(16, 2, shuffle=False), epochs=10, progress=False, callbacks=[es])
    assert len(h) == 3 and tr.epoch == 3 and es.stopped_epoch == 3
    assert "stopping after epoch 3" in capsys.readouterr().out
    # A second fit counts its own patience.
    h = tr.fit(loader(32), loader(16, 2, shuffle=False), epochs=10, progress=False, callbacks=[es])
    assert len(h) == 6 and es.stopped_epoch == 6


# --- ModelCheckpoint -----------------------------------------------------------------------------------
def test_model_checkpoint_keeps_the_top_k_as_plain_state_dicts(tmp_path):
    tr = trainer(optimizer=Adam(lr=3e-3))
    weights = {}

    def keep(info):
        if info["phase"] == "epoch":
            weights[info["epoch"]] = {k: v.clone() for k, v in tr.model.state_dict().items()}

    ck = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=2, save_last=True)
    h = tr.fit(loader(), loader(32, 2, shuffle=False), epochs=4, progress=False, callbacks=[keep, ck])
    vl = h["val_loss"]
    best2 = sorted(range(4), key=lambda i: vl[i])[:2]
    steps = len(loader())
    expect = {str(tmp_path / "ck" / f"epoch={i + 1}-step={(i + 1) * steps}.pth") for i in best2}
    assert set(ck.best_k_models) == expect
    assert sorted(os.listdir(tmp_path / "ck")) == sorted([os.path.basename(p) for p in expect] + ["last.pth"])
    assert ck.best_model_score == min(vl)
    best = best2[0] + 1
    assert ck.best_model_path.endswith(f"epoch={best}-step={best * steps}.pth")
    # The tutorial's own load line, verbatim.
    model = net(5)
    model.load_state_dict(torch.load(ck.best_model_path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[best][k]), k
    last = torch.load(ck.last_model_path)
    assert all(torch.equal(last[k], weights[4][k]) for k in last)


def test_model_checkpoint_without_monitor_every_n_epochs_max_mode_and_full_checkpoints(tmp_path):
    tr = trainer()
    ck = ModelCheckpoint(dirpath=tmp_path / "a", filename="latest")
    tr.fit(loader(), epochs=2, progress=False, callbacks=[ck])
    assert os.listdir(tmp_path / "a") == ["latest.pth"] and ck.best_model_path.endswith("latest.pth")
    ck = ModelCheckpoint(dirpath=tmp_path / "b", save_top_k=-1, every_n_epochs=2, auto_insert_metric_name=False)
    tr.fit(loader(), epochs=4, progress=False, callbacks=[ck])
    steps = len(loader())
    assert sorted(os.listdir(tmp_path / "b")) == [f"4-{4 * steps}.pth", f"6-{6 * steps}.pth"]
    ck = ModelCheckpoint(
        dirpath=tmp_path / "c", monitor="val_accuracy", mode="max", filename="{epoch}-{val_accuracy:.3f}"
    )
    h = tr.fit(loader(), loader(32, 2, shuffle=False), epochs=2, progress=False, callbacks=[ck])
    assert ck.best_model_score == max(h["val_accuracy"][-2:])
    assert len(os.listdir(tmp_path / "c")) == 1 and "val_accuracy=" in ck.best_model_path
    ck = ModelCheckpoint(dirpath=tmp_path / "d", filename="full", save_weights_only=False)
    tr.fit(loader(), epochs=1, progress=False, callbacks=[ck])
    back = fastcifar.Trainer.load(ck.best_model_path, device="cpu")
    assert back.epoch == tr.epoch
    # save_top_k=0 writes nothing but last.
    ck = ModelCheckpoint(dirpath=tmp_path / "e", save_top_k=0, save_last=True)
    tr.fit(loader(), epochs=1, progress=False, callbacks=[ck])
    assert os.listdir(tmp_path / "e") == ["last.pth"] and ck.best_model_path == ""


def test_every_callback_sees_the_epoch_at_which_one_stops(tmp_path):
    tr = trainer(optimizer=SGD(lr=0.0))
    ck = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    es = EarlyStopping(monitor="loss", patience=1, min_delta=1.0)
    h = tr.fit(loader(32), epochs=5, progress=False, callbacks=[es, ck])
    assert len(h) == 2 and es.stopped_epoch == 2
    assert os.path.basename(ck.best_model_path) == f"epoch=2-step={2 * len(loader(32))}.pth"
    assert os.path.exists(ck.last_model_path)


def test_model_checkpoint_outside_fit_says_how_to_use_it():
    with pytest.raises(RuntimeError, match="Trainer.fit\\(callbacks"):
        ModelCheckpoint()(epoch(epoch=1, loss=1.0))


# --- lr_find -------------------------------------------------------------------------------------------
def snapshot(tr):
    return {
        "model": {k: v.clone() for k, v in tr.model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in tr.model.parameters()],
        "opt": {
            k: [(n, {s: t.clone() if torch.is_tensor(t) else t for s, t in st.items()}) for n, st in v.items()]
            if k == "state"
            else v
            for k, v in tr.optimizer.state_dict().items()
        },
        "step": tr.global_step,
        "lr": tr.engine.current_lr(),
        "epoch": tr.epoch,
        "history": [dict(r) for r in tr.history],
        "rng": torch.get_rng_state(),
        "training": tr.model.training,
    }


def same(a, b):
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("make_opt", [lambda m: Adam(lr=1e-3), lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3)])
def test_lr_find_restores_everything_bit_for_bit_and_a_later_fit_is_unchanged(make_opt):
    a, b = net(0), net(0)
    ta, tb = trainer(a, make_opt(a)), trainer(b, make_opt(b))
    ld_a, ld_b = loader(), loader()
    ta.fit(ld_a, epochs=1, progress=False)
    tb.fit(ld_b, epochs=1, progress=False)
    ta.model.eval()  # a mode of the user's, to be given back
    before = snapshot(ta)
    assert before["opt"]["state"], "the optimizer has state to protect"
    r = ta.lr_find(ld_a, num_training=15, end_lr=1.0, progress=False)
    assert len(r.lrs) > 2
    after = snapshot(ta)
    for k in before:
        assert same(before[k], after[k]), k
    assert ld_a.epoch == ld_b.epoch
    # The range test leaves no trace: the next epochs are those of a trainer that never ran it.
    ta.model.train()
    ta.fit(ld_a, epochs=1, progress=False)
    tb.fit(ld_b, epochs=1, progress=False)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def test_lr_find_sweeps_on_the_engine():
    m = net()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)

    def python_step(*a, **k):
        raise AssertionError("the optimizer's own step() ran: the sweep left the Rust loop")

    opt.step = python_step  # torch's SGD runs in Rust; its step() must never be called
    tr = trainer(m, opt)
    r = tr.lr_find(loader(), start_lr=1e-5, end_lr=1e-2, num_training=12, early_stop_threshold=None, progress=False)
    assert len(r.lrs) == len(r.losses) == len(r.smoothed) == 12 and not r.diverged
    want = [1e-5 * 1000 ** (i / 11) for i in range(12)]
    np.testing.assert_allclose(r.lrs, want, rtol=1e-9)
    r = tr.lr_find(loader(), start_lr=0.01, end_lr=0.1, num_training=4, mode="linear", progress=False)
    np.testing.assert_allclose(r.lrs, [0.01, 0.04, 0.07, 0.1], rtol=1e-9)
    # The smoothed curve is the bias-corrected moving average of the losses (beta 0.98).
    avg, want = 0.0, []
    for i, v in enumerate(r.losses):
        avg = 0.98 * avg + 0.02 * v
        want.append(avg / (1 - 0.98 ** (i + 1)))
    np.testing.assert_allclose(r.smoothed, want, rtol=1e-12)
    assert r.results == {"lr": r.lrs, "loss": r.smoothed}


def test_lr_find_stops_when_the_loss_diverges_and_leaves_torch_state_alone():
    tr = trainer(optimizer=SGD(lr=0.1))
    threads = torch.get_num_threads()
    with torch.no_grad():
        r = tr.lr_find(loader(), start_lr=1e-2, end_lr=1e5, num_training=30, progress=False)
        assert not torch.is_grad_enabled()
    assert r.diverged and len(r.lrs) < 30
    best = min(r.smoothed[:-1])
    assert r.smoothed[-1] > 4.0 * best or not math.isfinite(r.smoothed[-1])
    assert torch.get_num_threads() == threads and not torch.is_autocast_enabled("cpu")
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_lr_find_suggestion_is_the_steepest_descent_and_plot_returns_a_figure():
    from fastcifar.engine.lr_find import LRFinder

    lrs = [10 ** (-5 + i / 4) for i in range(24)]
    curve = [2.0 - math.tanh((i - 15) / 2) for i in range(24)]  # falls fastest at index 15
    r = LRFinder(lrs, curve, curve, "exponential", diverged=False)
    assert r.suggestion() == lrs[15]
    assert r.suggestion(skip_begin=0, skip_end=10) == lrs[13]  # the steepest of what is left
    with pytest.warns(UserWarning, match="no suggestion"):
        assert r.suggestion(skip_begin=23) is None
    with pytest.raises(ValueError, match="skip_begin=-1"):
        r.suggestion(skip_begin=-1)
    import matplotlib.figure

    fig = r.plot()
    assert isinstance(fig, matplotlib.figure.Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and any("suggestion" in t.get_text() for t in ax.get_legend().get_texts())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"start_lr": 0.0}, "start_lr=0.0"),
        ({"start_lr": 1.0, "end_lr": 0.5}, "end_lr must be above start_lr"),
        ({"num_training": 1}, "num_training=1"),
        ({"mode": "cosine"}, "mode='cosine'"),
        ({"early_stop_threshold": -1.0}, "early_stop_threshold=-1.0"),
        ({"beta": 1.0}, "beta=1.0"),
    ],
)
def test_lr_find_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        trainer().lr_find(loader(), progress=False, **kw)


def test_lr_find_refuses_data_parallel_training():
    tr = trainer()
    tr.process_group = object()  # what __init__ sets under torchrun (one process cannot launch one)
    with pytest.raises(ValueError, match="lr_find: runs in one process"):
        tr.lr_find(loader(), progress=False)


# --- TensorBoardLogger ----------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_logger_without_tensorboard_names_the_fix(tmp_path):
    from fastcifar.loggers import TensorBoardLogger

    with pytest.raises(ImportError, match=r"pip install fastcifar\[tensorboard\]"):
        TensorBoardLogger(tmp_path)


class StandInWriter:
    """torch.utils.tensorboard.SummaryWriter's surface that the logger uses, recording the calls."""

    made: list = []

    def __init__(self, log_dir=None, **kwargs):
        os.makedirs(log_dir, exist_ok=True)
        self.log_dir, self.kwargs, self.scalars, self.texts, self.flushes = log_dir, kwargs, [], [], 0
        StandInWriter.made.append(self)

    def add_scalar(self, tag, value, global_step=None):
        self.scalars.append((tag, value, global_step))

    def add_text(self, tag, text):
        self.texts.append((tag, text))

    def flush(self):
        self.flushes += 1

    def close(self):
        pass


@pytest.fixture
def stand_in(monkeypatch):
    mod = types.ModuleType("torch.utils.tensorboard")
    mod.SummaryWriter = StandInWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", mod)
    StandInWriter.made = []
    return StandInWriter


def test_tensorboard_logger_writes_the_history_and_steps(tmp_path, stand_in):
    from fastcifar.loggers import TensorBoardLogger

    tb = TensorBoardLogger(tmp_path, name="run", flush_secs=7)
    tr = trainer(log_every=2)
    h = tr.fit(loader(), loader(32, 2, shuffle=False), epochs=2, progress=False, callbacks=[tb])
    (w,) = stand_in.made
    assert w.log_dir == str(tmp_path / "run" / "version_0") and w.kwargs == {"flush_secs": 7}
    got = {(t, s): v for t, v, s in w.scalars}
    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert [got[(k, e)] for e in (1, 2)] == h[k], k
    steps = len(loader())
    batch = sorted(s for t, _, s in w.scalars if t == "step/batch_loss")
    assert batch == [2, 4, 6, 8] and steps == 4
    assert w.flushes == 2 and w.texts[0][0] == "hparams"
    # The next run takes the next version; an int, a str and sub_dir as Lightning's; prefix joins with '-'.
    assert TensorBoardLogger(tmp_path, name="run").log_dir == str(tmp_path / "run" / "version_1")
    assert TensorBoardLogger(tmp_path, name="run", version=7).log_dir == str(tmp_path / "run" / "version_7")
    assert TensorBoardLogger(tmp_path, version="x", sub_dir="s").log_dir == str(tmp_path / "fastcifar_logs" / "x" / "s")
    tb = TensorBoardLogger(tmp_path, name="p", prefix="cifar")
    tb.log_metrics({"loss": 1.5, "note": "text is skipped"}, step=3)
    assert stand_in.made[-1].scalars == [("cifar-loss", 1.5, 3)]
    with pytest.raises(ValueError, match="log_graph"):
        TensorBoardLogger(tmp_path, log_graph=True)
