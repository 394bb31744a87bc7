"""Data-parallel training on torch.distributed: torchrun with 2 gloo processes on CPU."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import fastcifar

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dist_worker  # noqa: E402
from _internals import native_loader, native_trainer  # noqa: E402


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _torchrun(args, timeout=180, **env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + args
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=timeout, cwd=HERE)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = _torchrun(["dist_worker.py", "parity", "--out", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    runs = {
        name: [torch.load(out / f"{name}-rank{k}.pt", weights_only=False) for k in (0, 1)] for name in ("sync", "local")
    }
    runs["checkpoints"] = sorted(p.name for p in out.glob("*.pth"))
    return runs


@pytest.mark.torchrun
def test_only_rank_0_writes_checkpoints(parity_runs):
    assert parity_runs["checkpoints"] == ["local-ckpt-rank0.pth", "sync-ckpt-rank0.pth"]


@pytest.mark.torchrun
@pytest.mark.parametrize("name", ["sync", "local"])
def test_the_two_ranks_end_bit_identical(parity_runs, name):
    r0, r1 = parity_runs[name]
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # evaluate reduces over both shards: every rank reports on all 64 images, the same numbers.
    assert r0["eval"] == r1["eval"] and r0["eval"]["count"] == dist_worker.N
    untimed = [
        [{k: v for k, v in e.items() if k not in ("seconds", "images_per_s")} for e in r["history"]["epochs"]]
        for r in (r0, r1)
    ]
    assert untimed[0] == untimed[1]  # global loss and accuracy


@pytest.mark.torchrun
def test_sync_bn_data_parallel_equals_one_process_on_the_global_batches(parity_runs):
    # 2 ranks x 8 images, 2 micro-steps per optimizer step, over 2 epochs (with a shuffle and
    # random crops and flips) against one process with batches of 16: the same global batches.
    ref = dist_worker.run(2 * dist_worker.BATCH, sync_bn=False, accum=2, distributed=False)
    got = parity_runs["sync"][0]
    for k, v in ref["state"].items():
        w = got["state"][k]
        scale = v.double().abs().max().item() if v.is_floating_point() else 0
        torch.testing.assert_close(w, v, rtol=1e-5, atol=1e-5 * scale, msg=k)
    assert got["state"]["bn1.num_batches_tracked"].item() == 8  # 2 epochs x 4 micro-batches of 2 x 8 images
    for a, b in zip(got["history"]["epochs"], ref["history"]["epochs"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["accuracy"] == b["accuracy"] and a["val_accuracy"] == b["val_accuracy"]
    assert got["eval"]["count"] == ref["eval"]["count"] == dist_worker.N
    assert got["eval"]["confusion_matrix"] == ref["eval"]["confusion_matrix"]


@pytest.mark.subprocess
@pytest.mark.parametrize("mode", ["crash", "stall"])
def test_a_dead_or_silent_rank_makes_the_others_fail_not_hang(tmp_path, mode):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "dist_worker.py", mode, "--out", str(tmp_path)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(
                RANK=r, LOCAL_RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, FASTCIFAR_DIST_TIMEOUT=5
            ),
        )
        for r in (0, 1)
    ]
    t0 = time.time()
    try:
        out0, _ = procs[0].communicate(timeout=90)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 17, out0
    assert "distributed" in out0 and "failed on rank 0 of 2" in out0, out0
    if mode == "stall":
        assert "Timed out" in out0, out0  # gloo's own words for the collective timeout
    assert time.time() - t0 < 60


@pytest.mark.parametrize("n", [10, 64, 97])
@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_shards_are_disjoint_and_cover_the_data_set(n, world):
    ds = fastcifar.Dataset.from_numpy(np.zeros((n, 4, 4, 3), np.uint8), [0] * n, classes=["a"])
    loader = fastcifar.DataLoader(ds, batch_size=3, shuffle=True, seed=11)
    for epoch in (0, 1):
        padded = [native_loader(loader.shard(r, world)).indices(epoch) for r in range(world)]
        assert len({len(s) for s in padded}) == 1  # equal steps on every rank
        flat = sorted(i for s in padded for i in s)
        assert sorted(set(flat)) == list(range(n))  # covers everything
        assert len(flat) == -(-n // world) * world  # only the documented padding repeats
        exact = [native_loader(loader.shard(r, world, pad_shards=False)).indices(epoch) for r in range(world)]
        assert sorted(i for s in exact for i in s) == list(range(n))  # a partition: each sample once
        # Shards follow DistributedSampler: one permutation, rank r takes every world-th from r.
        perm = native_loader(loader).indices(epoch)
        assert exact == [perm[r::world] for r in range(world)]
    assert (
        native_loader(loader.shard(0, world)).indices(0) != native_loader(loader.shard(0, world)).indices(1) or n < 2
    )  # set_epoch reshuffles


def test_distributed_options_are_checked():
    model = fastcifar.models.small_cnn(10, width=8)
    with pytest.raises(ValueError, match="sync_bn"):
        fastcifar.Trainer(model, device="cpu", sync_bn=True)
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    try:
        with pytest.raises(RuntimeError, match="torchrun"):
            fastcifar.Trainer(model, device="cpu", distributed=True)
    finally:
        os.environ.update(env)
    tr = fastcifar.Trainer(model, device="cpu", distributed=False)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="bucket_cap_mb"):
            native_trainer(tr).set_process_group(_CountingGroup(), bad)
    ds = fastcifar.Dataset.from_numpy(np.zeros((4, 4, 4, 3), np.uint8), [0] * 4, classes=["a"])
    with pytest.raises(ValueError, match="rank"):
        fastcifar.DataLoader(ds, rank=2, world_size=2)


@pytest.mark.torchrun
def test_cli_train_under_torchrun(real_data, tmp_path):
    out = tmp_path / "run"
    r = _torchrun(
        [
            "-m",
            "fastcifar",
            "train",
            "--data",
            real_data,
            "--model",
            "small_cnn",
            "--width",
            "8",
            "--epochs",
            "1",
            "--subset",
            "1024",
            "--test-subset",
            "500",
            "--batch-size",
            "64",
            "--sync-bn",
            "--scheduler",
            "onecycle",
            "--lr",
            "0.01",
            "--out",
            str(out),
            "--quiet",
            "--full-hint-off",
        ],
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("data-parallel over 2 processes") == 1  # rank 0 alone prints
    assert r.stdout.count("Overall Accuracy") == 1
    assert {"best.pth", "checkpoint.pth", "history.json", "report.json"} <= set(os.listdir(out))
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["history"]["epochs"][0]["images_per_s"] > 0
    import json

    rep = json.load(open(out / "report.json"))
    assert rep["count"] == 500  # both ranks' evaluation shards, no padding counted twice


class _CountingGroup:
    """A one-rank stand-in for fastcifar.distributed.ProcessGroup that records each collective."""

    rank, world_size = 0, 1

    def __init__(self):
        self.reduces, self.anys = [], 0

    def all_reduce(self, tensors):
        self.reduces.append([t.numel() for t in tensors])

    def any(self, flags):
        self.anys += 1
        return list(flags)


@pytest.mark.parametrize("accum", [1, 3])
def test_one_collective_per_bucket_per_optimizer_step(accum):
    def trainer(group):
        torch.manual_seed(0)
        model = fastcifar.models.small_cnn(10, width=8)
        tr = fastcifar.Trainer(
            model,
            fastcifar.optim.SGD(lr=0.05, momentum=0.9),
            device="cpu",
            seed=0,
            log_every=5,
            grad_accum_steps=accum,
            distributed=False,
        )
        if group is not None:
            native_trainer(tr).set_process_group(group, 0.01)  # 10 KiB buckets: several for this model
        return model, tr

    loader = fastcifar.DataLoader(
        dist_worker.dataset(), batch_size=4, shuffle=True, transform=dist_worker.transform(True), seed=3
    )
    g = _CountingGroup()
    model, tr = trainer(g)
    tr.fit(loader, epochs=1, progress=False)
    steps = len(loader)  # 16 micro-batches
    grads = g.reduces[:-1]  # the last reduce is the epoch's loss / accuracy totals
    assert len(grads) == -(-steps // accum)  # micro-steps skip the collective
    sizes = [p.numel() for p in model.parameters()]
    assert all(sum(call) == sum(sizes) for call in grads)  # every gradient, once
    assert 1 < len(grads[0]) < len(sizes)  # bucketed: fewer messages than tensors
    assert g.reduces[-1] == [3] and g.anys == -(-steps // 5)
    # At world size 1 the bucketed path changes nothing: the same weights as plain training.
    plain, tr2 = trainer(None)
    loader.set_epoch(0)
    tr2.fit(loader, epochs=1, progress=False)
    for (k, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k
