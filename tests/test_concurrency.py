"""Threads and processes: fit in one thread while others use the model and trainer, and fastcifar
in forked, spawned and forkserver children (torch DataLoader workers). A hang must fail a test,
not stall the suite, so every scenario runs in a subprocess with a time limit."""

import os
import subprocess
import sys
import textwrap

import pytest
from _internals import native_dataset, stored_native_dataset

HEADER = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np, torch
    import fastcifar
    from fastcifar import models, transforms as T

    NORM = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
    rng = np.random.default_rng(0)
    IMAGES = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    LABELS = rng.integers(0, 10, 96)

    def wait_child(pid, limit_s=60):
        # The forked child's exit code; one that hangs is killed and fails the script.
        for _ in range(int(limit_s * 10)):
            r, status = os.waitpid(pid, os.WNOHANG)
            if r:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        os.kill(pid, 9)
        raise SystemExit("the forked child hung")
""")
# The scripts reach the trainer's and data sets' insides through the tests' one helper module.
HEADER += f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
HEADER += "from _internals import native_dataset, native_trainer\n"


def run_bounded(body: str, timeout: float = 90.0, args=()) -> str:
    """Runs HEADER + body in a fresh interpreter; a hang past `timeout` fails the test."""
    code = HEADER + textwrap.dedent(body)
    try:
        p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung for more than {timeout} s; output so far:\n{e.stdout}\n{e.stderr}")
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}"
    assert "DONE" in p.stdout, p.stdout
    return p.stdout


HAMMER = """
    path = sys.argv[1]
    ds = fastcifar.Dataset.from_numpy(IMAGES, LABELS)
    loader = fastcifar.DataLoader(ds, batch_size=16, shuffle=True, transform=NORM)
    model = models.small_cnn(width=4)
    tr = fastcifar.Trainer(model, optimizer=fastcifar.optim.SGD(lr=0.01, momentum=0.9),
                           scheduler=fastcifar.optim.lr_scheduler.StepLR(step_size=1), device="cpu", log_every=1)
    x = torch.randn(4, 3, 32, 32)
    # The model is the user's nn.Module: reading it, or running it, from another thread is fine while
    # fit trains it; writing its weights (load_state_dict) would race with training, as in plain
    # PyTorch, so it is not among these calls. The trainer's own methods wait for the epoch.
    calls = [
        lambda: model.device, lambda: model.training, lambda: model(x), lambda: model.forward(x),
        lambda: model.parameters(), lambda: list(model.named_parameters()), lambda: model.state_dict(),
        lambda: model.num_parameters(), lambda: model.config, lambda: model.name, lambda: model.num_classes,
        lambda: repr(model), lambda: model.train(model.training), lambda: model.to("cpu"),
        lambda: tr.state_dict(), lambda: tr.save(path), lambda: tr.optimizer.state_dict(),
        lambda: tr.optimizer.param_groups, lambda: tr.predict(IMAGES[:4]), lambda: tr.evaluate(loader, progress=False),
        lambda: tr.engine.current_lr(), lambda: tr.global_step, lambda: native_trainer(tr).scheduler_state(),
    ]
    errors, done = [], threading.Event()

    def fit():
        try:
            tr.fit(loader, epochs=EPOCHS, progress=False, callbacks=[lambda info: time.sleep(0.001)])
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def hammer(rounds):
        worst = 0.0
        while not done.is_set() or rounds > 0:
            rounds -= 1
            for f in calls:
                t = time.perf_counter()
                f()
                worst = max(worst, time.perf_counter() - t)
        return worst
"""


@pytest.mark.subprocess
def test_fit_in_a_thread_while_another_uses_every_model_and_trainer_method(tmp_path):
    out = run_bounded(
        HAMMER
        + """
    EPOCHS = 3
    t = threading.Thread(target=fit)
    t.start()
    worst = hammer(rounds=2)
    t.join(60)
    assert not t.is_alive() and not errors, errors
    assert len(tr.history) == 3
    assert fastcifar.Trainer.load(path, device="cpu").model.num_parameters() == model.num_parameters()
    print("worst call", round(worst, 3), "s")
    print("DONE")
    """,
        args=[str(tmp_path / "c.pth")],
    )
    # Waiting for the model is bounded by one epoch here (well under a second).
    worst = float(out.split("worst call ")[1].split()[0])
    assert worst < 20, out


@pytest.mark.subprocess
def test_fit_and_a_forking_torch_dataloader_while_the_model_is_used(tmp_path):
    run_bounded(
        HAMMER
        + """
    EPOCHS = 4
    torch_loader = torch.utils.data.DataLoader(fastcifar.Dataset.from_numpy(IMAGES, LABELS, transform=NORM),
                                               batch_size=32, num_workers=2, multiprocessing_context="fork")
    t = threading.Thread(target=fit)
    t.start()
    seen = 0
    while not done.is_set():
        seen += sum(len(y) for _, y in torch_loader)   # forks workers while fit runs
        hammer(rounds=1)
    t.join(60)
    assert not t.is_alive() and not errors, errors
    assert seen >= 96
    print("DONE")
    """,
        args=[str(tmp_path / "c.pth")],
    )


@pytest.mark.subprocess
def test_a_callback_that_reaches_its_own_trainer_is_refused_as_busy():
    run_bounded("""
    model = models.small_cnn(width=4)
    loader = fastcifar.DataLoader(fastcifar.Dataset.from_numpy(IMAGES, LABELS), batch_size=32, transform=NORM)
    tr = fastcifar.Trainer(model, device="cpu", log_every=1)
    try:
        tr.fit(loader, epochs=1, progress=False, callbacks=[lambda info: tr.optimizer.state_dict()])
        raise SystemExit("no error")
    except RuntimeError as e:
        assert "busy" in str(e) and "callback" in str(e), e
    # The module itself is the user's nn.Module: a step callback may use it.
    seen = []
    tr.fit(loader, epochs=1, progress=False, callbacks=[lambda i: seen.append(str(model.device))])
    assert set(seen) == {"cpu"} and model.training in (True, False)
    # Epoch-end callbacks run after the epoch: there the trainer is free.
    ends = []

    def at_epoch_end(info):
        if info["phase"] == "epoch":
            ends.append(len(tr.optimizer.state_dict()["state"]))

    tr.fit(loader, epochs=1, progress=False, callbacks=[at_epoch_end])
    assert ends and ends[0] > 0
    print("DONE")
    """)


FORK_CHILD = """
    import tempfile
    from PIL import Image
    root = tempfile.mkdtemp()
    for c in "ab":
        os.makedirs(os.path.join(root, c))
        for i in range(3):
            Image.fromarray(IMAGES[i]).save(os.path.join(root, c, f"{i}.png"))

    def use_everything():
        ds = fastcifar.Dataset.from_numpy(IMAGES, LABELS)
        folder = fastcifar.ImageFolder(root)
        loader = fastcifar.DataLoader(ds, batch_size=16, transform=NORM, shuffle=True)
        n = sum(len(y) for _, y in loader)
        tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
        tr.fit(loader, epochs=1, progress=False)
        pred = tr.predict(IMAGES[:5])
        return loader, tr, n, len(folder), pred

    loader, tr, n, nf, pred = use_everything()
    it = iter(loader)
    first = next(it)            # an epoch begun in the parent, its producer thread running
    pid = os.fork()
    if pid == 0:
        ok = 1
        try:
            rest = sum(len(y) for _, y in it)          # the parent's epoch, continued here
            again = sum(len(y) for _, y in loader)     # the parent's loader, a new epoch
            _, tr2, n2, nf2, _ = use_everything()      # everything again, fit included
            same = torch.equal(tr.predict(IMAGES[:5]), pred)
            ok = 0 if (rest, again, n2, nf2, same) == (80, 96, 96, 6, True) else 2
            print("child", rest, again, n2, nf2, same, flush=True)
        finally:
            os._exit(ok)
    assert wait_child(pid) == 0
    assert sum(len(y) for _, y in it) == 80   # the parent's epoch is unaffected
    print("DONE")
"""


@pytest.mark.subprocess
def test_every_call_works_in_a_forked_child_after_the_parent_used_the_library():
    out = run_bounded(FORK_CHILD)
    assert "child 80 96 96 6 True" in out


@pytest.mark.subprocess
def test_a_model_that_a_parent_thread_was_training_at_fork_is_refused_in_the_child():
    run_bounded("""
    ds = fastcifar.Dataset.from_numpy(IMAGES, LABELS)
    loader = fastcifar.DataLoader(ds, batch_size=8, transform=NORM)
    model = models.small_cnn(width=4)
    tr = fastcifar.Trainer(model, device="cpu", log_every=1)
    in_epoch = threading.Event()

    def fit():
        tr.fit(loader, epochs=2, progress=False, callbacks=[lambda i: in_epoch.set() or time.sleep(0.05)])

    t = threading.Thread(target=fit)
    t.start()
    in_epoch.wait(30)
    pid = os.fork()             # the fit thread holds the model and trainer now
    if pid == 0:
        code = 3
        try:
            for call in (lambda: tr.state_dict(), lambda: tr.predict(IMAGES[:2])):
                try:
                    call()
                    code = 4
                except RuntimeError as e:
                    assert "was in use by a fit or evaluate in another thread of the parent" in str(e), e
            # The module is a plain nn.Module: it works in the child.
            assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10) and str(model.device) == "cpu"
            # Everything else works in the child, a new model included.
            tr2 = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
            tr2.fit(fastcifar.DataLoader(ds, batch_size=32, transform=NORM), epochs=1, progress=False)
            code = 0 if code == 3 else code
        finally:
            os._exit(code)
    assert wait_child(pid) == 0
    t.join(60)
    assert len(tr.history) == 2
    print("DONE")
    """)


WORKERS = """
    import pickle, tempfile
    import torchvision.transforms as TV
    from PIL import Image
    ctx = sys.argv[1]
    # torchvision's transforms (a script run with -c has no importable __main__ for spawn workers)
    tv = TV.Compose([TV.ToTensor(), TV.Normalize((0.5,) * 3, (0.25,) * 3)])
    exact = T.Compose([T.CenterCrop(28), T.Resize(32), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
    rand = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(), T.ToTensor()])
    root = tempfile.mkdtemp()
    for c in "ab":
        os.makedirs(os.path.join(root, c))
        for i in range(10):
            Image.fromarray(IMAGES[i]).save(os.path.join(root, c, f"{i}.png"))
    folder = fastcifar.ImageFolder(root, transform=tv)
    assert pickle.loads(pickle.dumps(folder))._recipe()[0] == "folder"   # by path
    parts = [  # (data set, what its items must equal; None for random transforms)
        (fastcifar.Dataset.from_numpy(IMAGES, LABELS, transform=tv), tv),
        (fastcifar.Dataset.from_numpy(IMAGES, LABELS, transform=exact), exact),
        (fastcifar.Dataset.from_numpy(IMAGES, LABELS, transform=rand), None),
        (folder, tv),
        (folder.subset(range(0, 20, 3)), tv),                            # by value
    ]
    # One pool of workers for all (each spawned worker imports torch: seconds).
    loader = torch.utils.data.DataLoader(torch.utils.data.ConcatDataset([d for d, _ in parts]), batch_size=16,
                                         num_workers=2 if ctx == "fork" else 1, multiprocessing_context=ctx)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert y.tolist() == [t for d, _ in parts for t in d.targets], "labels differ"
    start = 0
    for d, want in parts:
        got = x[start:start + len(d)]
        start += len(d)
        if want is None:
            assert got.shape == (len(d), 3, 32, 32) and 0 <= got.min() and got.max() <= 1
        else:
            assert torch.equal(got, torch.stack([want(d.data[i]) for i in range(len(d))])), type(d).__name__
    print("DONE")
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("ctx", ["fork", "spawn", "forkserver"])
def test_torch_dataloader_workers_over_fastcifar_datasets(ctx):
    run_bounded(WORKERS, timeout=120, args=[ctx])


@pytest.mark.subprocess
def test_cifar_pickles_by_path_and_assigned_arrays_by_value(real_data):
    run_bounded(
        """
    import pickle
    c = fastcifar.CIFAR10(sys.argv[1], train=False)
    blob = pickle.dumps(c)
    assert len(blob) < 10_000, len(blob)          # the path and options, not 30 MB of pixels
    c2 = pickle.loads(blob)
    assert np.array_equal(c2.data, c.data) and c2.targets == c.targets and c2.classes == c.classes
    c.targets = [1] * len(c)
    c.classes                                    # rebuilds the native data set from the new targets
    c3 = pickle.loads(pickle.dumps(c))
    assert set(c3.targets) == {1} and set(native_dataset(c3).targets.tolist()) == {1}
    print("DONE")
    """,
        args=[real_data],
    )


def test_copies_share_the_immutable_native_data_set_and_pickles_round_trip():
    import copy
    import pickle

    import numpy as np

    import fastcifar
    from fastcifar import transforms as T

    ds = fastcifar.Dataset.from_numpy(
        np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3) % 251,
        [0, 1, 2, 0, 1],
        transform=T.Compose([T.RandomCrop(4, padding=1), T.ToTensor()]),
    )
    shallow, deep = copy.copy(ds), copy.deepcopy(ds)
    assert stored_native_dataset(shallow) is stored_native_dataset(ds) and stored_native_dataset(
        deep
    ) is stored_native_dataset(ds)
    assert deep.transform is not ds.transform and repr(deep.transform) == repr(ds.transform)
    deep.targets = [0] * 5
    assert (
        ds.targets == [0, 1, 2, 0, 1]
        and deep.classes == ["0", "1", "2"]
        and set(native_dataset(deep).targets.tolist()) == {0}
    )
    back = pickle.loads(pickle.dumps(ds))
    assert (
        np.array_equal(back.data, ds.data) and back.targets == ds.targets and repr(back.transform) == repr(ds.transform)
    )
