"""The user's whole workflow around training (issue 24): the files fit writes, read with the
tutorial's own save and load lines; resuming from them; the CLI on any data set and model and its
files; and the output and silent differences a new user meets."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from conftest import write_cifar10
from PIL import Image
from test_datasets_mnist_svhn import mnist_root

import fastcifar
from fastcifar import _warn, cli, models
from fastcifar import transforms as T
from fastcifar.trainer import ScheduleHorizonError

SEED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "seed", "image-classification-in-pytorch.txt")
NORM = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])


def synthetic(n=64, seed=0):
    """Learnable images: each class its own colour, under noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    palette = np.random.default_rng(99).integers(0, 256, (10, 3))
    x = np.clip(palette[y][:, None, None, :] + rng.normal(0, 30, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return fastcifar.Dataset.from_numpy(x, y, classes=[f"c{i}" for i in range(10)])


def loaders(n=64, batch=16):
    train = fastcifar.DataLoader(synthetic(n), batch_size=batch, shuffle=True, transform=NORM, seed=0)
    val = fastcifar.DataLoader(synthetic(32, seed=1), batch_size=batch, transform=NORM)
    return train, val


class Net(torch.nn.Module):
    """A user's own class, importable as test_workflow:Net (Trainer.load imports it)."""

    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def seed_lines(first, last):
    """The tutorial's lines from the one that starts with ``first`` to the one that contains ``last``."""
    if not os.path.exists(SEED):
        pytest.skip("the seed tutorial is not beside the checkout (../shared/seed)")
    lines = open(SEED).read().splitlines()
    i = next(k for k, line in enumerate(lines) if line.strip().startswith(first))
    j = next(k for k in range(i, len(lines)) if last in lines[k])
    return "\n".join(line.strip() for line in lines[i : j + 1])


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


# --- 1: best weights as the tutorial has them --------------------------------------------
def test_the_tutorials_own_load_lines_read_fits_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, val = loaders()
    torch.manual_seed(0)
    model = models.ImageClassifier(num_classes=10, input_size=32)
    tr = fastcifar.Trainer(model, fastcifar.optim.Adam(lr=3e-3), device="cpu")
    h = tr.fit(train, val, epochs=3, checkpoint="best_model.pth", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["best_model.ckpt.pth", "best_model.pth"]
    last = {k: v.clone() for k, v in model.state_dict().items()}
    best_epoch = int(np.argmax(h["val_accuracy"])) + 1

    # The README's table: fit(checkpoint='best_model.pth') replaces the loop's
    # torch.save(model.state_dict(), 'best_model.pth'); the tutorial reads it back with its own line.
    load_best = seed_lines("model.load_state_dict(torch.load('model_weights.pth'))", "model_weights.pth").replace(
        "model_weights.pth", "best_model.pth"
    )
    fresh = models.ImageClassifier(num_classes=10)
    exec(load_best, {"torch": torch, "model": fresh})
    full = torch.load("best_model.ckpt.pth", weights_only=True)
    assert full["epoch"] == 3 and full["accuracy"] == max(h["val_accuracy"])
    assert same_weights(full["model_state_dict"], last)  # the resumable file is the last epoch's
    # The default: the module keeps the last epoch's weights (as the tutorial's loop leaves it).
    assert same_weights(model.state_dict(), last)
    if best_epoch != 3:
        assert not same_weights(fresh.state_dict(), last)

    # The tutorial's checkpoint block, verbatim, on trainer.save's file and on fit's .ckpt.pth.
    block = seed_lines("checkpoint = torch.load('checkpoint.pth')", "model.eval()")
    for source in ("trainer.save", "best_model.ckpt.pth"):
        if source == "trainer.save":
            tr.save("checkpoint.pth")
        else:
            shutil.copy("best_model.ckpt.pth", "checkpoint.pth")
        ns = {"torch": torch, "ImageClassifier": models.ImageClassifier, "device": "cpu"}
        exec(block, ns)
        assert same_weights(ns["model"].state_dict(), last)

    # And its inference-only pair, on trainer.save_weights's file.
    tr.save_weights("model_weights.pth")
    ns = {"torch": torch, "model": models.ImageClassifier(num_classes=10)}
    exec(seed_lines("model.load_state_dict(torch.load('model_weights.pth'))", "model_weights.pth"), ns)
    assert same_weights(ns["model"].state_dict(), last)


def test_restore_best_leaves_the_module_holding_the_best_epoch(tmp_path):
    train, val = loaders()
    torch.manual_seed(1)
    tr = fastcifar.Trainer(models.small_cnn(width=8), fastcifar.optim.Adam(lr=3e-3), device="cpu")
    seen = []
    h = tr.fit(
        train,
        val,
        epochs=3,
        checkpoint=tmp_path / "b.pth",
        progress=False,
        restore_best=True,
        callbacks=[
            lambda i: (
                seen.append({k: v.clone() for k, v in tr.model.state_dict().items()}) if i["phase"] == "epoch" else None
            )
        ],
    )
    best = int(np.argmax(h["val_accuracy"]))
    assert same_weights(tr.model.state_dict(), seen[best])
    assert same_weights(torch.load(tmp_path / "b.pth", weights_only=True), seen[best])
    assert tr.evaluate(val).accuracy == max(h["val_accuracy"])
    with pytest.raises(ValueError, match="restore_best: .*pass val_loader"):
        tr.fit(train, epochs=1, restore_best=True)
    with pytest.raises(TypeError, match="restore_best: expected True or False"):
        tr.fit(train, val, epochs=1, restore_best="yes")


# --- 2: resume anywhere ------------------------------------------------------------------
@pytest.mark.parametrize(
    "schedule",
    [
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2, 5], gamma=0.3),
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, "min", patience=0, factor=0.5),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6, eta_min=1e-4),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=[0.05, 0.2], total_steps=40, pct_start=0.2),
    ],
    ids=["multistep", "plateau", "cosine", "onecycle"],
)
def test_trainer_load_rebuilds_torch_optimizer_groups_and_schedules(tmp_path, schedule):
    def build():
        torch.manual_seed(0)
        m = Net()
        o = torch.optim.SGD(
            [{"params": m.conv.parameters(), "lr": 0.05}, {"params": m.fc.parameters()}], lr=0.1, momentum=0.9
        )
        return m, o, schedule(o)

    train, val = loaders()
    m, o, s = build()
    tr = fastcifar.Trainer(m, o, s, device="cpu")
    tr.fit(train, val, epochs=2, checkpoint=tmp_path / "w.pth", progress=False)
    # Nothing but the path: the class is imported, optimizer and schedule built from what was recorded.
    back = fastcifar.Trainer.load(tmp_path / "w.ckpt.pth", device="cpu")
    assert type(back.model) is Net and type(back.optimizer) is torch.optim.SGD and type(back.scheduler) is type(s)
    assert [len(g["params"]) for g in back.optimizer.param_groups] == [2, 2]
    assert [g["lr"] for g in back.optimizer.param_groups] == [g["lr"] for g in o.param_groups]
    theirs, ours = s.state_dict(), back.scheduler.state_dict()
    assert {k: v for k, v in ours.items() if not callable(v)} == {k: v for k, v in theirs.items() if not callable(v)}
    # ... and it continues as the original does.
    tr.fit(train, val, epochs=1, progress=False)
    back.fit(train, val, epochs=1, progress=False)
    assert same_weights(back.model.state_dict(), tr.model.state_dict())
    assert back.history["val_loss"] == tr.history["val_loss"]


def test_what_cannot_be_rebuilt_is_asked_for_by_name(tmp_path):
    train, _ = loaders(32)
    m = Net()
    o = torch.optim.SGD(m.parameters(), lr=0.1)
    tr = fastcifar.Trainer(m, o, torch.optim.lr_scheduler.LambdaLR(o, lambda e: 0.5**e), device="cpu")
    tr.fit(train, epochs=1, progress=False)
    tr.save(tmp_path / "c.pth")
    with pytest.raises(ValueError, match=r"LambdaLR.*Trainer.load\(path, optimizer=\.\.\., scheduler=\.\.\.\)"):
        fastcifar.Trainer.load(tmp_path / "c.pth", device="cpu")

    class Local(Net):  # defined in a function: no import finds it
        pass

    tr = fastcifar.Trainer(Local(), device="cpu")
    tr.save(tmp_path / "l.pth")
    with pytest.raises(ValueError, match=r"pass it: Trainer.load\(path, model=YourModule"):
        fastcifar.Trainer.load(tmp_path / "l.pth", device="cpu")
    assert type(fastcifar.Trainer.load(tmp_path / "l.pth", device="cpu", model=Local()).model) is Local


def _one_cycle(kind, total_steps=8):
    m = Net()
    if kind == "torch":
        o = torch.optim.SGD(m.parameters(), lr=0.1)
        return m, o, torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=total_steps)
    return m, fastcifar.optim.SGD(lr=0.1), fastcifar.optim.lr_scheduler.OneCycleLR(max_lr=0.1, total_steps=total_steps)


@pytest.mark.parametrize("kind", ["torch", "fastcifar"])
def test_one_cycle_horizon_is_named_before_training_with_the_fix(tmp_path, kind):
    train, _ = loaders(64)  # 4 steps per epoch
    tr = fastcifar.Trainer(*_one_cycle(kind), device="cpu")
    tr.fit(train, epochs=2, checkpoint=tmp_path / "c.pth", progress=False)
    back = fastcifar.Trainer.load(tmp_path / "c.ckpt.pth", device="cpu")
    with pytest.raises(ScheduleHorizonError, match=r"OneCycleLR was built for 8 steps and has taken 8.*max_steps=8"):
        back.fit(train, epochs=1, progress=False)
    assert back.epoch == 2 and back.global_step == 8
    fresh = fastcifar.Trainer(*_one_cycle(kind), device="cpu")
    with pytest.raises(ScheduleHorizonError, match=r"has taken 0; fit\(epochs=3\) would take 12 more"):
        fresh.fit(train, epochs=3, progress=False)
    fresh.fit(train, epochs=3, progress=False, max_steps=8)  # the fix it names: stop where the cycle ends
    assert fresh.global_step == 8 and fresh.epoch == 2


# --- 3: the CLI on any data set and model, and every file it writes -------------------------
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    write_cifar10(str(root / "data"), n_train=(20, 20, 20, 20, 20), n_test=30, layouts=("bin",))
    out = root / "run"
    code = cli.main(
        ["train", "--data", str(root / "data"), "--model", "small_cnn", "--width", "4", "--epochs", "1"]
        + ["--batch-size", "25", "--out", str(out), "--quiet", "--full-hint-off"]
    )
    assert code == 0
    return root, out


def test_cli_writes_the_run_and_reads_back_every_file_it_wrote(cli_run, capsys):
    root, out = cli_run
    names = set(os.listdir(out))
    assert {
        "best.pth",
        "best.ckpt.pth",
        "checkpoint.pth",
        "model_weights.pth",
        "model.safetensors",
        "run.json",
    } <= names
    assert json.load(open(out / "run.json"))["dataset"] == "cifar10"
    img = root / "x.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(img)
    reports = {}
    for name in ("best.pth", "best.ckpt.pth", "checkpoint.pth", "model_weights.pth", "model.safetensors"):
        capsys.readouterr()
        assert cli.main(["evaluate", str(out / name), "--data", str(root / "data"), "--json", "--quiet"]) == 0
        reports[name] = json.loads(capsys.readouterr().out)["accuracy"]
        assert cli.main(["predict", str(out / name), str(img), "--top", "1"]) == 0
        assert capsys.readouterr().out.startswith(f"{img}: ")
    assert len(set(reports.values())) == 1  # one epoch: best and last are the same weights
    # Weights alone, away from their run: refused by name, pointing to the file that describes the model.
    lone = root / "lone"
    lone.mkdir()
    shutil.copy(out / "model_weights.pth", lone / "model_weights.pth")
    with pytest.raises(SystemExit, match="holds weights only.*checkpoint.pth or best.ckpt.pth"):
        cli.main(["predict", str(lone / "model_weights.pth"), str(img)])


def test_cli_resume_continues_a_run(cli_run, capsys, tmp_path):
    root, out = cli_run
    run = tmp_path / "r"
    shutil.copytree(out, run)
    capsys.readouterr()
    assert (
        cli.main(
            ["train", "--resume", str(run / "best.ckpt.pth"), "--epochs", "3", "--quiet", "--data", str(root / "data")]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "resuming" in text and "Trained 2 epochs" in text and "(3 epochs in all)" in text
    back = fastcifar.Trainer.load(run / "checkpoint.pth", device="cpu")
    assert back.epoch == 3 and len(back.history) == 3 and type(back.model) is models.SmallCNN
    assert back.global_step == 3 * 4
    with pytest.raises(SystemExit, match="--lr: not with --resume"):
        cli.main(["train", "--resume", str(run / "checkpoint.pth"), "--lr", "0.1"])


def test_cli_resume_past_a_one_cycle_names_the_fix(tmp_path, capsys):
    write_cifar10(str(tmp_path / "data"), n_train=(10, 10, 10, 10, 10), n_test=10, layouts=("bin",))
    common = ["--data", str(tmp_path / "data"), "--quiet", "--full-hint-off"]
    args = ["train", "--model", "small_cnn", "--width", "4", "--epochs", "1", "--batch-size", "25"]
    assert cli.main(args + ["--scheduler", "onecycle", "--out", str(tmp_path / "o"), *common]) == 0
    code = cli.main(["train", "--resume", str(tmp_path / "o" / "checkpoint.pth"), "--epochs", "2", *common])
    assert code == 1
    assert "OneCycleLR was built for 2 steps" in capsys.readouterr().err


def test_cli_any_data_set_and_your_own_model_class(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root, _ = mnist_root(tmp_path / "m", cls="FashionMNIST", n=(20, 8))
    (tmp_path / "mynets.py").write_text(
        "import torch\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self, num_classes, in_channels):\n"
        "        super().__init__()\n"
        "        self.c = torch.nn.Conv2d(in_channels, 4, 3)\n"
        "        self.f = torch.nn.Linear(4, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.f(self.c(x).mean((2, 3)))\n"
    )
    common = ["--epochs", "1", "--batch-size", "10", "--quiet", "--full-hint-off"]
    assert (
        cli.main(
            ["train", "--dataset", "fashionmnist", "--data", str(root), "--model", "mynets:Tiny", "--out", "f", *common]
        )
        == 0
    )
    back = fastcifar.Trainer.load("f/checkpoint.pth", device="cpu")
    assert type(back.model).__name__ == "Tiny" and back.model.c.in_channels == 1 and back.input_shape == (1, 28, 28)
    assert back.classes == fastcifar.FashionMNIST(root, train=False).classes
    assert cli.main(["evaluate", "f/best.pth", "--data", str(root), "--quiet", "--json"]) == 0  # dataset from run.json
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["count"] == 8
    # An image folder: DIR/train and DIR/test of <class>/<image>.
    for split, n in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            os.makedirs(f"imgs/{split}/{c}")
            for i in range(n):
                Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(f"imgs/{split}/{c}/{i}.png")
    assert (
        cli.main(["train", "--dataset", "folder", "--data", "imgs", "--model", "resnet9", "--out", "g", *common]) == 0
    )
    assert fastcifar.Trainer.load("g/checkpoint.pth", device="cpu").classes == ["a", "b"]
    assert cli.DATASETS.keys() == {"cifar10", "cifar100", "mnist", "fashionmnist", "svhn", "folder"}


def test_cli_data_messages_name_what_was_looked_for_where(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dataset", "cifar100", "--data", str(tmp_path / "empty")])
    msg = str(e.value)
    assert f"no CIFAR-100 found in --data {tmp_path / 'empty'}" in msg and "pass --data DIR" not in msg
    assert "cifar-100" in msg  # the data set's own account of what it looked for
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "nonsense"])
    assert (
        "'nonsense' is not one of image_classifier, resnet9, resnet18, small_cnn nor module:Class"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    helptext = capsys.readouterr().out
    assert e.value.code == 0 and "(default: None)" not in helptext and "./data) (default" not in helptext
    assert "fashionmnist" in helptext and "module:Class" in helptext and "--resume" in helptext


# --- 6: silent differences from torch ----------------------------------------------------------
def test_silent_differences_are_torchs_or_said(tmp_path):
    ds = synthetic(16)
    _warn.forget(("loader", "no-transform"))
    with pytest.warns(UserWarning, match="no transform.*torch's DataLoader raises on PIL images"):
        x, _ = next(iter(fastcifar.DataLoader(ds, batch_size=4)))
    assert x.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        fastcifar.DataLoader(ds, batch_size=4)
        fastcifar.DataLoader(ds, batch_size=4, transform=T.ToTensor())
    # A checkpoint in a folder that does not exist: refused before training, as torch.save refuses it.
    tr = fastcifar.Trainer(Net(), device="cpu")
    train, _ = loaders(32)
    with pytest.raises(FileNotFoundError, match=r"nonexistent.* does not exist .*os.makedirs"):
        tr.fit(train, epochs=1, checkpoint=tmp_path / "nonexistent" / "x.pth")
    assert tr.epoch == 0 and not (tmp_path / "nonexistent").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tr.save(tmp_path / "nonexistent" / "c.pth")
    # predict(names=True) before any fit: no names to give.
    tr = fastcifar.Trainer(Net(), device="cpu")
    with pytest.raises(ValueError, match=r"names=True: this trainer knows no class names yet.*trainer.classes"):
        tr.predict(torch.zeros(1, 3, 32, 32), names=True)
    tr.fit(train, epochs=1, progress=False)
    assert tr.predict(torch.zeros(1, 3, 32, 32), names=True)[0] in ds.classes
    # .data: torchvision's is writable; here it is a view of the Rust buffer, and a copy assigned first is.
    write_cifar10(str(tmp_path / "c"), layouts=("bin",))
    cifar = fastcifar.CIFAR10(str(tmp_path / "c"))
    with pytest.raises(ValueError, match="read-only"):
        cifar.data[0] = 0
    cifar.data = cifar.data.copy()
    cifar.data[0] = 7
    assert np.asarray(cifar[0][0]).max() == 7 and len(cifar) == 10


# --- 8: output -----------------------------------------------------------------------------
def test_progress_follows_the_terminal_and_evaluate_follows_fit(capsys):
    train, val = loaders(32)
    tr = fastcifar.Trainer(Net(), device="cpu")
    tr.fit(train, val, epochs=1)  # under pytest, stderr is no terminal: no bar, one plain line
    cap = capsys.readouterr()
    assert "\r" not in cap.err and "Epoch [1/1] loss" in cap.out
    tr.fit(train, epochs=1, progress=False)
    tr.evaluate(val)  # follows fit(progress=False): no bar
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    tr.fit(train, epochs=1, progress=True)  # asked for: a bar, whatever the stream
    assert "Epoch 3/3" in capsys.readouterr().err
    with pytest.raises(TypeError, match="progress: expected True, False or None"):
        tr.fit(train, epochs=1, progress="yes")


def test_repr_and_messages(tmp_path):
    tr = fastcifar.Trainer(
        models.small_cnn(width=4),
        fastcifar.optim.SGD(lr=0.1),
        fastcifar.optim.lr_scheduler.OneCycleLR(max_lr=0.1, total_steps=10),
        device="cpu",
    )
    tr.save(tmp_path / "c.pth")
    back = fastcifar.Trainer.load(tmp_path / "c.pth", device="cpu")
    assert "scheduler=OneCycleLR" in repr(back) and "_Schedule" not in repr(back)
    assert isinstance(back.scheduler, fastcifar.optim.lr_scheduler.OneCycleLR)
    assert repr(synthetic(8).subset([1, 2])).splitlines()[0] == "Dataset (from arrays) (subset)"
    write_cifar10(str(tmp_path / "d"), layouts=("bin",))
    cifar = fastcifar.CIFAR10(str(tmp_path / "d"))
    assert repr(cifar.subset([0])).splitlines()[0] == "Dataset CIFAR10 (subset)"
    gray = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
    with pytest.raises(
        ValueError, match=r"expects 3 input channels, got 1.*in_channels=1.*Grayscale\(num_output_channels=3\)"
    ):
        gray.predict(torch.zeros(2, 1, 32, 32))
    rgb = fastcifar.Trainer(models.small_cnn(width=4, in_channels=1), device="cpu")
    with pytest.raises(ValueError, match=r"expects 1 input channels, got 3.*in_channels=3.*Grayscale\(\)"):
        rgb.predict(torch.zeros(2, 3, 32, 32))
