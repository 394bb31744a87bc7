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


def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "ckpt.pth"
    rng = np.random.default_rng(0)
    for trial in range(4):
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
    loader = fastcifar.DataLoader(synthetic(96), batch_size=16, shuffle=True, seed=4,
                                  transform=T.Compose([T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)]))

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
    resumed = fastcifar.Trainer.load(tmp_path / "c.pth", device="cpu")  # the end of epoch 2
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
    t = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
    loader = fastcifar.DataLoader(fastcifar.CIFAR10(real_data, transform=t), batch_size=128, shuffle=True, seed=0)
    rss = []
    t0 = time.perf_counter()
    for e in range(200):
        for x, y in loader:
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
