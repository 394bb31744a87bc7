"""Faults and long runs: a writer killed mid-checkpoint, an interrupted fit resumed, NaN/inf
inputs, and (behind -m slow) long-run memory stability."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import fastcifar
from fastcifar import models
from fastcifar import transforms as T
from fastcifar.optim import Adam

NORM = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])


def synthetic(n=128, seed=0):
    rng = np.random.default_rng(seed)
    return fastcifar.Dataset.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))


WRITER = textwrap.dedent("""
    import sys, fastcifar
    from fastcifar import models
    path = sys.argv[1]
    tr = fastcifar.Trainer(models.ImageClassifier(), device="cpu")   # ~13 MB of weights per save
    i = 0
    while True:
        tr.epoch = i
        tr.save(path)
        print("saved", i, flush=True)
        i += 1
""")


@pytest.mark.subprocess
def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "ckpt.pth"
    rng = np.random.default_rng(0)
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().startswith("saved")  # at least one complete checkpoint exists
        time.sleep(float(rng.uniform(0.0, 0.3)))  # then kill it at a random point of later saves
        p.send_signal(signal.SIGKILL)
        p.wait()
        tr = fastcifar.Trainer.load(path, device="cpu")
        assert tr.epoch >= 0 and tr.model.num_parameters() == 3_249_994
    # The next save cleans up what a killed writer left behind.
    fastcifar.Trainer(models.small_cnn(width=4), device="cpu").save(path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth"]


def test_resume_after_an_interrupted_fit_continues_exactly(tmp_path):
    loader = fastcifar.DataLoader(
        synthetic(96),
        batch_size=16,
        shuffle=True,
        seed=4,
        transform=T.Compose([T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)]),
    )

    def make():
        torch.manual_seed(0)
        return fastcifar.Trainer(models.small_cnn(width=8), optimizer=Adam(lr=2e-3), device="cpu", log_every=1)

    def losses(tr, epochs, stop_at=None):
        out = []

        def cb(i):
            if i["phase"] != "step":
                return None
            if stop_at is not None and (i["epoch"], i["step"]) == stop_at:
                raise KeyboardInterrupt  # as Ctrl-C would, mid-epoch
            out.append(i["batch_loss"])
            return None

        tr.fit(loader, epochs=epochs, checkpoint=tmp_path / "c.pth", callbacks=[cb], progress=False)
        return out

    full = losses(make(), 4)
    tr = make()
    first = losses(tr, 4, stop_at=(2, 3))  # interrupted in the third epoch (0-based 2)
    assert len(first) == 2 * 6 + 2 and tr.history.interrupted["epoch"] == 3 and len(tr.history) == tr.epoch == 2
    resumed = fastcifar.Trainer.load(tmp_path / "c.ckpt.pth", device="cpu")  # the end of epoch 2
    assert resumed.epoch == 2
    rest = losses(resumed, 2)
    assert full[:12] + rest == full


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_inputs_are_refused(bad):
    tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
    x = torch.zeros(2, 3, 32, 32)
    x[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        tr.predict(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        tr.predict_proba(x)


def _rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20


@pytest.mark.slow
def test_200_loader_epochs_keep_rss_flat(real_data):
    t = T.Compose(
        [T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)]
    )
    loader = fastcifar.DataLoader(fastcifar.CIFAR10(real_data, transform=t), batch_size=128, shuffle=True, seed=0)
    rss = []
    t0 = time.perf_counter()
    for e in range(200):
        for _ in loader:
            pass
        if e % 20 == 19:
            rss.append(_rss_mb())
    print(f"\n200 epochs in {time.perf_counter() - t0:.1f}s; RSS (MB) every 20 epochs: {[round(r) for r in rss]}")
    assert max(rss) - min(rss) < 64


@pytest.mark.slow
def test_many_fit_evaluate_cycles_keep_rss_flat():
    loader = fastcifar.DataLoader(synthetic(256), batch_size=64, shuffle=True, transform=NORM, seed=0)
    tr = fastcifar.Trainer(models.small_cnn(width=16), device="cpu")
    rss = []
    for cycle in range(300):
        tr.fit(loader, epochs=1, progress=False)
        tr.evaluate(loader, progress=False)
        if cycle % 30 == 29:
            rss.append(_rss_mb())
    print(f"\nRSS (MB) every 30 fit+evaluate cycles: {[round(r) for r in rss]}")
    assert max(rss) - min(rss) < 64


# --- temporary files: one per write, never another target's ---------------------------------
IO_WRITER = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("fc_io", sys.argv[1])
    io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io)
    path, tag, n = sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
    failed = 0
    for i in range(n):
        body = tag * 16384 + str(i).encode()
        try:
            io.atomic_write(path, lambda tmp: open(tmp, "wb").write(body))
        except OSError as e:
            failed += 1
            print("failed", e, flush=True)
    print("failures", failed)
""")
IO_PY = os.path.join(os.path.dirname(fastcifar.__file__), "_files.py")


def _writers(targets, n=150):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", IO_WRITER, IO_PY, str(p), tag, str(n)], stdout=subprocess.PIPE, text=True
        )
        for p, tag in targets
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    return [int(o.split("failures ")[1]) for o in outs], outs


@pytest.mark.subprocess
def test_concurrent_writers_to_different_names_never_interfere(tmp_path):
    a, b = tmp_path / "p.pth", tmp_path / "p.pth.best"
    failures, outs = _writers([(a, "A"), (b, "B")])
    assert failures == [0, 0], outs
    assert a.read_bytes().startswith(b"A" * 16384) and b.read_bytes().startswith(b"B" * 16384)
    assert sorted(os.listdir(tmp_path)) == ["p.pth", "p.pth.best"]


@pytest.mark.subprocess
def test_two_writers_to_one_name_both_succeed_and_the_file_is_whole(tmp_path):
    p = tmp_path / "p.pth"
    failures, outs = _writers([(p, "A"), (p, "B")])
    assert failures == [0, 0], outs
    data = p.read_bytes()
    assert data[:16384] in (b"A" * 16384, b"B" * 16384) and data[16384:].decode().isdigit()
    assert os.listdir(tmp_path) == ["p.pth"]


@pytest.mark.subprocess
def test_clean_up_removes_only_this_targets_stale_temps(tmp_path):
    from fastcifar._files import atomic_write

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    names = {
        "own_dead": f".p.pth.{dead}.0123456789ab.tmp",  # a killed writer of p.pth: removed
        "own_live": f".p.pth.{os.getppid()}.0123456789ab.tmp",  # a running writer (young): kept
        "own_old": f".p.pth.{os.getppid()}.ba9876543210.tmp",  # running but hours old: removed
        "other": f".p.pth.best.{dead}.0123456789ab.tmp",  # another target's: kept
        "user": ".p.pth.notes.tmp",  # not ours at all: kept
    }
    for n in names.values():
        (tmp_path / n).write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(tmp_path / names["own_old"], (old, old))
    atomic_write(tmp_path / "p.pth", lambda tmp: open(tmp, "wb").write(b"new"))
    left = set(os.listdir(tmp_path))
    assert left == {"p.pth", names["own_live"], names["other"], names["user"]}, left


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        fastcifar.Trainer(models.small_cnn(width=4), device="cpu").save(tmp_path / "c.pth")
        models.small_cnn(width=4).save(tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "c.pth").st_mode & 0o777) == oct(0o640)
    assert oct(os.stat(tmp_path / "m.safetensors").st_mode & 0o777) == oct(0o640)


# --- disk full and unwritable folders -----------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (needs root; skipped where mounting is not allowed)."""
    d = tmp_path / "disk"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_a_full_disk_is_an_oserror_naming_the_path(small_disk):
    tr = fastcifar.Trainer(models.ImageClassifier(), device="cpu")  # a 13 MB checkpoint on a 1 MB disk
    path = small_disk / "c.pth"
    with pytest.raises(OSError, match="No space left on device") as e:
        tr.save(path)
    assert e.value.errno == 28 and str(path) in str(e.value)
    with pytest.raises(OSError, match="No space left") as e:
        tr.model.save(small_disk / "m.safetensors")
    assert e.value.errno == 28
    assert os.listdir(small_disk) == []  # no temporary file left behind


def test_fit_checks_the_checkpoint_folder_before_training(small_disk, tmp_path):
    with open(small_disk / "filler", "wb") as f:
        try:
            f.write(b"\0" * (2 << 20))
        except OSError:
            pass  # full now
    tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
    loader = fastcifar.DataLoader(synthetic(32), batch_size=16, transform=NORM)
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="No space left") as e:
        tr.fit(loader, epochs=3, checkpoint=small_disk / "c.pth", progress=False)
    assert e.value.errno == 28 and len(tr.history) == 0 and tr.epoch == 0
    # A checkpoint path under a file (not a folder) is refused at the start too.
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError, match="afile"):
        tr.fit(loader, epochs=1, checkpoint=tmp_path / "afile" / "c.pth", progress=False)
    assert len(tr.history) == 0 and time.perf_counter() - t0 < 30


# --- silent no-ops and mismatches ---------------------------------------------------------
def test_fit_with_zero_steps_per_epoch_is_refused():
    tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
    loader = fastcifar.DataLoader(synthetic(40), batch_size=64, drop_last=True, transform=NORM)
    with pytest.raises(
        ValueError, match=r"train_loader: yields no batch per epoch \(40 images, batch_size=64, drop_last=True\)"
    ):
        tr.fit(loader, epochs=2, progress=False)
    ok = fastcifar.DataLoader(synthetic(40), batch_size=16, transform=NORM)
    with pytest.raises(ValueError, match="val_loader: yields no batch"):
        tr.fit(ok, loader, epochs=1, progress=False)
    assert len(tr.history) == 0


def test_a_checkpoint_of_another_optimizer_or_schedule_is_refused_by_name(tmp_path):
    from fastcifar.optim import SGD, lr_scheduler

    def trainer(opt, sched=None):
        return fastcifar.Trainer(models.small_cnn(width=4), optimizer=opt, scheduler=sched, device="cpu")

    src = trainer(Adam(lr=1e-3), lr_scheduler.StepLR(step_size=2))
    src.fit(fastcifar.DataLoader(synthetic(32), batch_size=16, transform=NORM), epochs=1, progress=False)
    src.save(tmp_path / "c.pth")
    ckpt = torch.load(tmp_path / "c.pth", weights_only=True)
    cases = [
        (trainer(SGD(lr=1e-3), lr_scheduler.StepLR(step_size=2)), "optimizer is Adam, this trainer's is SGD"),
        (
            trainer(Adam(lr=1e-3, weight_decay=0.1), lr_scheduler.StepLR(step_size=2)),
            r"optimizer Adam was saved with weight_decay=0.0 \(this trainer: 0.1\)",
        ),
        (trainer(Adam(lr=1e-3)), "schedule is StepLR, this trainer's is None"),
        (trainer(Adam(lr=1e-3), lr_scheduler.StepLR(step_size=3)), "scheduler StepLR was saved with step_size=2 "),
    ]
    for tr, msg in cases:
        with pytest.raises(ValueError, match=msg):
            tr.load_state_dict(ckpt)
        assert tr.epoch == 0
    # A checkpoint in torch's plain format (no fastcifar entry): the state's shape tells the kind.
    plain = {k: v for k, v in ckpt.items() if k != "fastcifar"}
    with pytest.raises(ValueError, match=r"optimizer state is Adam-like \(betas\), this trainer's optimizer is SGD"):
        trainer(SGD(lr=1e-3), lr_scheduler.StepLR(step_size=2)).load_state_dict(plain)
    # The matching trainer loads it, and Trainer.load builds the right one.
    same = trainer(Adam(lr=1e-3), lr_scheduler.StepLR(step_size=2))
    same.load_state_dict(ckpt)
    assert same.epoch == 1 and same.optimizer.settings() == src.optimizer.settings()
    assert fastcifar.Trainer.load(tmp_path / "c.pth", device="cpu").optimizer.name == "Adam"
    # The learning rate is state (a schedule moves it), not a setting: the checkpoint's is taken.
    other_lr = trainer(Adam(lr=1e-2), lr_scheduler.StepLR(step_size=2))
    other_lr.load_state_dict(ckpt)
    assert (
        other_lr.optimizer.param_groups[0]["lr"] == src.optimizer.param_groups[0]["lr"] == other_lr.engine.current_lr()
    )


def test_derived_classes_are_bounded_by_the_input():
    img = np.zeros((2, 4, 4, 3), np.uint8)
    t0 = time.perf_counter()
    for label in (2**62, 5_000_000):
        with pytest.raises(ValueError, match=rf"label {label} at index 1 would make {label + 1} classes for 2 images"):
            fastcifar.Dataset.from_numpy(img, [0, label])
    assert time.perf_counter() - t0 < 1
    assert len(fastcifar.Dataset.from_numpy(img, [0, 999]).classes) == 1000  # small label spaces still derive
    with pytest.raises(ValueError, match="label 5000000 at index 1 is out of range for 3 classes"):
        fastcifar.Dataset.from_numpy(img, [0, 5_000_000], classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="does not fit in int64"):
        fastcifar.Dataset.from_numpy(img, np.array([0, 2**64 - 1], dtype=np.uint64))


def _folder(root, classes="ab", n=3):
    from PIL import Image

    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_skips_symlink_cycles_and_reads_only_regular_files(tmp_path):
    _folder(tmp_path)
    os.symlink(".", tmp_path / "a" / "loop")
    os.symlink("..", tmp_path / "a" / "up")
    ds = fastcifar.ImageFolder(tmp_path)
    assert len(ds) == 6 and ds.targets == [0, 0, 0, 1, 1, 1]
    os.mkfifo(tmp_path / "b" / "x.png")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"x\.png: not a regular file"):
        fastcifar.ImageFolder(tmp_path)
    assert time.perf_counter() - t0 < 5


def test_image_folder_refuses_class_names_that_are_not_utf8(tmp_path):
    _folder(tmp_path)
    bad = os.path.join(os.fsencode(tmp_path), b"c\xff")
    os.mkdir(bad)
    os.symlink(os.fsencode(tmp_path / "a" / "0.png"), os.path.join(bad, b"0.png"))
    with pytest.raises(ValueError, match="class folder name is not valid UTF-8"):
        fastcifar.ImageFolder(tmp_path)
