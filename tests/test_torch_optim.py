"""The training code users already have: torch.optim optimizers and lr_scheduler schedules handed to
the Trainer as built, fastcifar.optim with torch's exact signatures, Ctrl-C within a step, callback
errors, and a continued fit after an interrupted epoch."""

import _thread
import threading
import time

import numpy as np
import pytest
import torch
from _internals import native_loader, on_engine

import fastcifar
from fastcifar import _warn, models
from fastcifar import transforms as T
from fastcifar.optim import SGD, Adam, lr_scheduler

NORM = T.Compose([T.ToTensor(), T.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))])


def synthetic(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[np.arange(n), :8, :8, :] = (y * 25)[:, None, None, None].astype(np.uint8)
    return fastcifar.Dataset.from_numpy(x, y, classes=[f"c{i}" for i in range(10)])


def twins(width=8):
    torch.manual_seed(0)
    a = models.small_cnn(10, width=width)
    b = models.small_cnn(10, width=width)
    b.load_state_dict(a.state_dict())
    return a, b


def loader(n=96, seed=1):
    return fastcifar.DataLoader(synthetic(n), batch_size=16, shuffle=True, seed=seed, transform=NORM)


def fit_losses(tr, ld, epochs, val=None):
    out = []
    tr.fit(
        ld,
        val,
        epochs=epochs,
        progress=False,
        callbacks=[lambda i: out.append((i["batch_loss"], i["lr"])) if i["phase"] == "step" else None],
    )
    return out


def torch_loop(model, opt, ld, epochs, sched=None, per_step=False, metric=False):
    """The seed's loop over the same batches; ReduceLROnPlateau gets the epoch's mean train loss, as
    fit gives it without a validation loader."""
    out, crit = [], torch.nn.CrossEntropyLoss()
    for e in range(epochs):
        model.train()
        tot, cnt = 0.0, 0
        for x, y in native_loader(ld).epoch(e):
            lr = opt.param_groups[0]["lr"]
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            out.append((loss.item(), lr))
            tot, cnt = tot + loss.item() * len(y), cnt + len(y)
            if sched is not None and per_step:
                sched.step()
        if sched is not None and not per_step:
            sched.step(tot / cnt) if metric else sched.step()
    return out


def assert_same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        assert sa["state"][k].keys() == sb["state"][k].keys(), k
        for n, v in sa["state"][k].items():
            torch.testing.assert_close(v, sb["state"][k][n], rtol=1e-5, atol=1e-6, msg=f"{k}.{n}")


def test_the_seeds_own_optimizer_and_schedule_lines_run_on_the_engine():
    ours, theirs = twins()
    optimizer = torch.optim.Adam(ours.parameters(), lr=0.001, weight_decay=1e-4)  # the seed's lines, verbatim
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", patience=0, factor=0.5)
    tr = fastcifar.Trainer(ours, optimizer, scheduler, device="cpu", log_every=1)
    assert on_engine(tr)  # Adam runs in Rust
    ld = loader()
    a = fit_losses(tr, ld, 3)
    opt2 = torch.optim.Adam(theirs.parameters(), lr=0.001, weight_decay=1e-4)
    b = torch_loop(
        theirs,
        opt2,
        ld,
        3,
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt2, "min", patience=0, factor=0.5),
        metric=True,
    )
    np.testing.assert_allclose([loss for loss, _ in a], [loss for loss, _ in b], rtol=1e-4)
    assert [lr for _, lr in a] == [lr for _, lr in b]
    # The torch objects hold what torch would: moments, step counts, the schedule's state.
    assert_same_state(optimizer, opt2)
    assert (
        scheduler.state_dict()["num_bad_epochs"] >= 0 and optimizer.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
    )
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.05),
        lambda p: torch.optim.RMSprop(p, lr=1e-3),  # not on the engine: its own step()
        lambda p: torch.optim.Adam(p, lr=3e-3, amsgrad=True),  # a flag the engine lacks: own step()
        lambda p: (
            lambda ps: torch.optim.SGD([{"params": ps[:4], "lr": 0.1}, {"params": ps[4:]}], lr=0.01, momentum=0.9)
        )(list(p)),
    ],
    ids=["sgd-nesterov", "adamw", "rmsprop", "amsgrad", "two-groups"],
)
def test_any_torch_optimizer_trains_as_in_the_torch_loop(make):
    ours, theirs = twins()
    opt = make(ours.parameters())
    tr = fastcifar.Trainer(ours, opt, device="cpu", log_every=1)
    ld = loader()
    a = fit_losses(tr, ld, 2)
    opt2 = make(theirs.parameters())
    b = torch_loop(theirs, opt2, ld, 2)
    np.testing.assert_allclose([loss for loss, _ in a], [loss for loss, _ in b], rtol=1e-4)
    assert_same_state(opt, opt2)


@pytest.mark.parametrize(
    "make,per_step",
    [
        (lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5), False),
        (lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [1, 3], 0.3), False),
        (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 4, 1e-4), False),
        (
            lambda o: torch.optim.lr_scheduler.SequentialLR(
                o,
                [
                    torch.optim.lr_scheduler.LinearLR(o, 0.2, total_iters=2),
                    torch.optim.lr_scheduler.ExponentialLR(o, 0.7),
                ],
                [2],
            ),
            False,
        ),
        (lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.1, total_steps=24), True),
        (
            lambda o: torch.optim.lr_scheduler.OneCycleLR(
                o, 0.1, total_steps=24, anneal_strategy="linear", three_phase=True
            ),
            True,
        ),
    ],
    ids=["step", "multistep", "cosine", "sequential", "onecycle", "onecycle-linear-3phase"],
)
def test_torch_schedules_give_torchs_rates(make, per_step):
    ours, theirs = twins()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    tr = fastcifar.Trainer(ours, opt, make(opt), device="cpu", log_every=1)
    ld = loader()
    a = fit_losses(tr, ld, 4)
    opt2 = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    b = torch_loop(theirs, opt2, ld, 4, make(opt2), per_step=per_step)
    np.testing.assert_allclose([lr for _, lr in a], [lr for _, lr in b], rtol=1e-12)
    np.testing.assert_allclose([loss for loss, _ in a], [loss for loss, _ in b], rtol=1e-4)
    assert tr.scheduler.state_dict()["last_epoch"] == (24 if per_step else 4)


def test_a_torch_optimizer_resumes_from_a_checkpoint(tmp_path):
    ours, _ = twins()
    opt = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    tr = fastcifar.Trainer(ours, opt, device="cpu")
    tr.fit(loader(), epochs=1, progress=False)
    tr.save(tmp_path / "c.pth")
    sd = torch.load(tmp_path / "c.pth", weights_only=False)
    assert set(sd["optimizer_state_dict"]["state"][0]) == {"momentum_buffer"}
    back = fastcifar.Trainer.load(tmp_path / "c.pth", device="cpu")
    assert type(back.optimizer) is torch.optim.SGD and back.optimizer.param_groups[0]["momentum"] == 0.9
    assert_same_state(back.optimizer, opt)


def test_fastcifar_schedules_take_torchs_positional_arguments():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert lr_scheduler.StepLR(opt, 2, 0.5).settings() == {"step_size": 2, "gamma": 0.5}
    assert lr_scheduler.StepLR(2, 0.5).settings() == {"step_size": 2, "gamma": 0.5}
    assert lr_scheduler.CosineAnnealingLR(opt, 10, 0.01).settings() == {"T_max": 10, "eta_min": 0.01}
    s = lr_scheduler.ReduceLROnPlateau(opt, "max", 0.5, 2).settings()
    assert (s["mode"], s["factor"], s["patience"]) == ("max", 0.5, 2)
    s = lr_scheduler.ReduceLROnPlateau(Adam(lr=0.1), threshold_mode="abs", eps=0.5).settings()
    assert (s["threshold_mode"], s["eps"]) == ("abs", 0.5)
    assert lr_scheduler.OneCycleLR(opt, 0.1, 10).settings()["total_steps"] == 10
    from fastcifar.optim.lr_scheduler import StepLR  # a real module

    assert StepLR is lr_scheduler.StepLR
    for bad, match in [
        (lambda: lr_scheduler.StepLR(opt, 2, 0.5, 3), "last_epoch"),
        (lambda: lr_scheduler.StepLR(opt, 2, 0.5, -1, 9), "positional"),
        (lambda: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5, verbose=True), "verbose"),
        (lambda: lr_scheduler.OneCycleLR(opt, 0.1, 10, three_phase=True), "three_phase"),
        (lambda: lr_scheduler.ReduceLROnPlateau(opt, "sideways"), "mode"),
    ]:
        with pytest.raises((TypeError, ValueError), match=match):
            bad()


def test_plateau_eps_and_abs_threshold_are_honoured():
    ld = loader(32)

    def lrs(**kw):
        torch.manual_seed(0)
        tr = fastcifar.Trainer(
            models.small_cnn(width=4),
            SGD(lr=0.1),
            lr_scheduler.ReduceLROnPlateau(patience=0, factor=0.5, **kw),
            device="cpu",
        )
        return [r["lr"] for r in tr.fit(ld, epochs=3, progress=False)]

    # threshold 10 (relative): no epoch counts as better, so every epoch asks for a cut, but each
    # cut (0.05) is smaller than eps and is not made.
    assert lrs(eps=1.0, threshold=10.0) == [0.1, 0.1, 0.1]
    assert lrs(threshold=10.0) == [0.1, 0.05, 0.025]
    # threshold 10 (absolute): the first epoch improves on inf, the second does not improve by 10.
    assert lrs(threshold=10.0, threshold_mode="abs") == [0.1, 0.1, 0.05]


def test_one_cycle_past_its_end_raises_before_training_with_the_fix():
    tr = fastcifar.Trainer(
        models.small_cnn(width=4), SGD(lr=0.1), lr_scheduler.OneCycleLR(max_lr=0.1, total_steps=6), device="cpu"
    )
    tr.fit(loader(96), epochs=1, progress=False)  # 6 steps: the whole cycle
    # torch's (and the core's) OneCycleLR raise at step 7, mid-epoch; the trainer says so before training.
    with pytest.raises(fastcifar.trainer.ScheduleHorizonError, match="built for 6 steps and has taken 6.*max_steps=6"):
        tr.fit(loader(96), epochs=1, progress=False)
    assert tr.global_step == 6 and tr.epoch == 1


def test_param_group_writes_take_effect_at_the_next_step():
    for make in (lambda m: SGD(lr=0.1), lambda m: torch.optim.SGD(m.parameters(), lr=0.1)):
        m = models.small_cnn(width=4)
        opt = make(m)
        tr = fastcifar.Trainer(m, opt, device="cpu", log_every=1)
        seen = []

        def cb(i, seen=seen, opt=opt):  # bound now: B023
            if i["phase"] == "step":
                seen.append(i["lr"])
                opt.param_groups[0]["lr"] = 0.0 if i["step"] == 2 else opt.param_groups[0]["lr"]

        tr.fit(loader(96), epochs=1, progress=False, callbacks=[cb])
        assert seen == [0.1, 0.1, 0.0, 0.0, 0.0, 0.0]
        before = {k: v.clone() for k, v in m.state_dict().items()}
        tr.fit(loader(96), epochs=1, progress=False)  # lr 0: the weights stay
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items() if k.endswith("weight"))
        opt.param_groups[0]["lr"] = 0.2
        assert tr.fit(loader(96), epochs=1, progress=False)["lr"][-1] == 0.2


def test_fastcifar_optimizers_and_schedules_in_a_users_own_loop_point_to_torch_optim():
    m = models.small_cnn(width=4)
    opt = Adam(m.parameters(), lr=1e-3)
    for call in (opt.step, opt.zero_grad, lr_scheduler.StepLR(opt, 2).step):
        with pytest.raises(RuntimeError, match="torch.optim"):
            call()
    with pytest.raises(ValueError, match="amsgrad"):
        Adam(amsgrad=True)
    with pytest.raises(ValueError, match="group 0 sets \\['momentum'\\].*pass torch.optim.SGD"):
        SGD([{"params": m.parameters(), "momentum": 0.9}])
    tr = fastcifar.Trainer(m, opt, lr_scheduler.StepLR(opt, 1, 0.5), device="cpu")
    tr.fit(loader(32), epochs=1, progress=False)
    assert tr.scheduler.get_last_lr() == [5e-4] and opt.param_groups[0]["lr"] == 5e-4


def test_ctrl_c_is_seen_within_one_step_whatever_log_every_is():
    """The seed model at batch 128 on CPU: fit returns within one step plus a second of Ctrl-C."""
    ds = synthetic(128 * 6)
    ld = fastcifar.DataLoader(ds, batch_size=128, transform=NORM)
    tr = fastcifar.Trainer(models.ImageClassifier(), device="cpu")  # log_every=20: more steps than the epoch has
    t0 = time.perf_counter()
    tr.fit(ld, epochs=1, progress=False)
    step = (time.perf_counter() - t0) / len(ld)  # one step, measured on this machine now
    sent = []
    timer = threading.Timer(1.5 * step, lambda: (sent.append(time.perf_counter()), _thread.interrupt_main()))
    timer.start()
    h = tr.fit(ld, epochs=3, progress=False)
    took = time.perf_counter() - sent[0]
    assert took < 2 * step + 1.0, (took, step)  # the step under way, then the check before the next
    assert tr.epoch == 1 and len(h) == 1 and h.interrupted["epoch"] == 2


def test_a_continued_fit_neither_repeats_nor_loses_an_epoch():
    tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu", log_every=1)
    ld = loader(96)
    tr.fit(ld, epochs=1, progress=False)
    tr.fit(
        ld,
        epochs=2,
        progress=False,
        callbacks=[lambda i: i["phase"] != "step" or not (i["epoch"] == 1 and i["step"] == 3)],
    )
    assert tr.epoch == 1 and [r["epoch"] for r in tr.history] == [1] and tr.history.interrupted["epoch"] == 2
    tr.fit(ld, epochs=2, progress=False)
    assert tr.epoch == 3 and [r["epoch"] for r in tr.history] == [1, 2, 3] and tr.history.interrupted is None


def test_callback_errors_come_back_as_themselves(monkeypatch):
    tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu", log_every=1)

    def boom(info):
        raise ZeroDivisionError("from my callback")

    with pytest.raises(ZeroDivisionError, match="from my callback"):
        tr.fit(loader(32), epochs=1, progress=False, callbacks=[boom])

    class Bar:
        n = 0

        def refresh(self):
            raise LookupError("from the progress bar")

        def close(self):
            pass

    import fastcifar.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "_bar", lambda total, desc, enabled: Bar())
    with pytest.raises(LookupError, match="from the progress bar"):
        tr.evaluate(loader(32))


def test_trainer_repr_says_what_it_trains():
    tr = fastcifar.Trainer(models.small_cnn(width=4), Adam(lr=1e-3), device="cpu")
    r = repr(tr)
    assert "SmallCNN" in r and "parameters" in r and "device=cpu" in r and "Adam(lr=0.001)" in r and "epoch=0" in r


def test_predict_takes_what_the_cli_takes(tmp_path):
    from PIL import Image

    ds = synthetic(64)
    tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
    tr.fit(fastcifar.DataLoader(ds, batch_size=16, transform=NORM), epochs=1, progress=False)
    assert tr.classes == [f"c{i}" for i in range(10)] and tr.input_shape == (3, 32, 32)
    rgb = ds.data[0]
    want = tr.predict_logits(rgb)
    png = tmp_path / "a.png"
    Image.fromarray(rgb).save(png)
    torch.testing.assert_close(tr.predict_logits(str(png)), want)  # a path
    torch.testing.assert_close(tr.predict_logits([png, png])[1], want[0])  # a list of paths
    torch.testing.assert_close(tr.predict_logits(Image.fromarray(rgb)), want)  # a PIL image
    rgba = Image.fromarray(rgb).convert("RGBA")
    torch.testing.assert_close(tr.predict_logits(rgba), want)  # any mode
    big = Image.fromarray(rgb).resize((64, 48))
    assert tr.predict_logits(big).shape == (1, 10)  # any size: resized
    assert tr.predict(Image.fromarray(rgb).convert("L")).shape == (1,)  # grayscale into an RGB model
    assert tr.predict([png], names=True) == [tr.classes[int(want.argmax())]]
    with pytest.raises(ValueError, match=r"64x64, but the model was trained on 32x32; resize them.*T.Resize"):
        tr.predict(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="have 4 channels, the model takes 3"):
        tr.predict(np.zeros((32, 32, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="no such image file"):
        tr.predict(str(tmp_path / "nope.png"))
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read this image"):
        tr.predict(str(tmp_path / "junk.png"))
    tr.save(tmp_path / "c.pth")
    back = fastcifar.Trainer.load(tmp_path / "c.pth", device="cpu")
    assert back.classes == tr.classes and back.input_shape == (3, 32, 32)
    torch.testing.assert_close(back.predict_logits(str(png)), want)


@pytest.mark.subprocess
def test_cli_version_and_help_defaults():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fastcifar", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("fastcifar ")
    r = subprocess.run([sys.executable, "-m", "fastcifar", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "(default: 50)" in r.stdout and "(default: image_classifier)" in r.stdout


def test_plots_are_closed_so_a_notebook_shows_each_once():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
    h = tr.fit(loader(32), epochs=1, progress=False)
    before = len(plt.get_fignums())
    fig = fastcifar.plot.plot_history(h)
    assert fig is not None and len(plt.get_fignums()) == before


def test_bad_schedule_arguments_are_named():
    m = models.small_cnn(width=4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    other = torch.optim.SGD(m.parameters(), lr=0.1)
    for make, exc, match in [
        (
            lambda: fastcifar.Trainer(m, opt, torch.optim.lr_scheduler.StepLR(other, 1), device="cpu"),
            ValueError,
            "another optimizer",
        ),
        (lambda: fastcifar.Trainer(m, opt, device="cpu", scheduler_interval="batch"), ValueError, "scheduler_interval"),
        (
            lambda: fastcifar.Trainer(
                m, opt, torch.optim.lr_scheduler.ReduceLROnPlateau(opt), device="cpu", scheduler_interval="step"
            ),
            ValueError,
            "once per epoch",
        ),
        (lambda: fastcifar.Trainer(m, opt, "cosine", device="cpu"), TypeError, "scheduler"),
    ]:
        with pytest.raises(exc, match=match):
            make()


def test_a_checkpoint_with_a_torch_schedule_resumes_rebuilt_or_given(tmp_path):
    def build():
        torch.manual_seed(0)
        m = models.small_cnn(width=4)
        o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        return m, o, torch.optim.lr_scheduler.StepLR(o, 1, 0.5)

    m, o, s = build()
    tr = fastcifar.Trainer(m, o, s, device="cpu")
    tr.fit(loader(32), epochs=2, progress=False)
    tr.save(tmp_path / "c.pth")
    # Rebuilt from the arguments recorded at save time (StepLR(o, step_size=1, gamma=0.5)), then its state.
    rebuilt = fastcifar.Trainer.load(tmp_path / "c.pth", device="cpu")
    assert type(rebuilt.scheduler) is torch.optim.lr_scheduler.StepLR and rebuilt.scheduler.last_epoch == 2
    assert (rebuilt.scheduler.step_size, rebuilt.scheduler.gamma) == (1, 0.5)
    assert_same_state(rebuilt.optimizer, o)
    m2, o2, s2 = build()
    back = fastcifar.Trainer.load(tmp_path / "c.pth", device="cpu", model=m2, optimizer=o2, scheduler=s2)
    assert back.epoch == 2 and s2.last_epoch == 2 and o2.param_groups[0]["lr"] == 0.025
    assert_same_state(o2, o)


def test_torch_schedules_on_the_engine_raise_no_order_warning():
    import warnings

    m = models.small_cnn(width=4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for sched in (
        torch.optim.lr_scheduler.StepLR(opt, 1),
        torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=100),
    ):
        tr = fastcifar.Trainer(m, opt, sched, device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tr.fit(loader(32), epochs=1, progress=False)


def test_fit_takes_torchs_own_dataloader_through_python():

    ds = torch.utils.data.TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    ld = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    ours, theirs = twins()
    _warn.forget()
    tr = fastcifar.Trainer(ours, torch.optim.SGD(ours.parameters(), lr=0.05), device="cpu", log_every=1)
    with pytest.warns(UserWarning, match="through Python.*torch's loader"):
        h = tr.fit(ld, ld, epochs=2, progress=False)
    assert len(h) == 2 and "val_accuracy" in h.epochs[-1]
    rep = tr.evaluate(torch.utils.data.DataLoader(ds, batch_size=32))
    assert rep.count == 64
    # The same batches in the plain loop give the same losses.
    fixed = [(x, y) for x, y in torch.utils.data.DataLoader(ds, batch_size=16)]
    ours2, theirs2 = twins()
    tr2 = fastcifar.Trainer(ours2, torch.optim.SGD(ours2.parameters(), lr=0.05), device="cpu", log_every=1)
    a = []
    tr2.fit(
        torch.utils.data.DataLoader(ds, batch_size=16),
        epochs=1,
        progress=False,
        callbacks=[lambda i: a.append(i["batch_loss"]) if i["phase"] == "step" else None],
    )
    opt = torch.optim.SGD(theirs2.parameters(), lr=0.05)
    b = []
    for x, y in fixed:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(theirs2(x), y)
        loss.backward()
        opt.step()
        b.append(loss.item())
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_a_python_fed_batch_that_is_not_images_and_labels_is_named():
    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"x": torch.zeros(3, 32, 32), "y": 0}

    _warn.forget()
    tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
    with pytest.warns(UserWarning, match="through Python"):
        with pytest.raises(TypeError, match=r"a batch must be \(images, labels\) tensors, got dict"):
            tr.fit(torch.utils.data.DataLoader(Dicts(), batch_size=4), epochs=1, progress=False)
