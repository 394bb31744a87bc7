"""One rank of the data-parallel tests (test_distributed.py launches it with torchrun or by hand).

parity: trains small_cnn with sync_bn and grad accumulation, then with local BatchNorm, and
        saves each run's state_dict, history and evaluation to OUT/<run>-rank<r>.pt.
crash:  rank 1 dies (os._exit) at step 2; rank 0 must raise, not hang.
stall:  rank 1 stops answering at step 2; rank 0 must raise after the process group's timeout.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

import fastcifar
from fastcifar import transforms as T

N, BATCH = 64, 8  # per rank: 64 images / 2 ranks / 8 = 4 steps an epoch
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def dataset():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, N).tolist()
    return fastcifar.Dataset.from_numpy(x, y, classes=[str(i) for i in range(10)])


def transform(train):
    if train:
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    return T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


def run(batch, sync_bn, accum, distributed, epochs=2, callback=None, save_to=None):
    """One training run; the single-process reference calls it with batch = world_size * BATCH."""
    torch.manual_seed(0)
    model = fastcifar.models.small_cnn(10, width=8)
    ds = dataset()
    train = fastcifar.DataLoader(ds, batch_size=batch, shuffle=True, transform=transform(True), seed=7, num_threads=1)
    val = fastcifar.DataLoader(ds, batch_size=10, transform=transform(False), num_threads=1)
    tr = fastcifar.Trainer(
        model,
        fastcifar.optim.SGD(lr=0.05, momentum=0.9),
        device="cpu",
        seed=0,
        log_every=1,
        grad_accum_steps=accum,
        distributed=distributed,
        sync_bn=sync_bn,
    )
    hist = tr.fit(train, val, epochs=epochs, progress=False, callbacks=[callback] if callback else ())
    rep = tr.evaluate(val, progress=False)
    if save_to:
        tr.save(f"{save_to}-rank{tr.rank}.pth")  # only rank 0 writes
    return {
        "state": model.state_dict(),
        "history": hist.to_dict(),
        "eval": rep.to_dict(),
        "rank": tr.rank,
        "world_size": tr.world_size,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("parity", "crash", "stall"))
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rank = int(os.environ["RANK"])
    if a.mode == "parity":
        for name, sync_bn, accum in (("sync", True, 2), ("local", False, 1)):
            r = run(BATCH, sync_bn, accum, distributed=True, save_to=os.path.join(a.out, f"{name}-ckpt"))
            torch.save(r, os.path.join(a.out, f"{name}-rank{rank}.pt"))
        return 0

    def fail(info):
        if rank == 1 and info.get("phase") == "step" and info["step"] == 2:
            if a.mode == "crash":
                os._exit(3)
            time.sleep(3600)

    t0 = time.time()
    try:
        run(BATCH, False, 1, distributed=True, callback=fail)
    except RuntimeError as e:
        print(f"rank {rank} raised after {time.time() - t0:.1f}s: {e}", flush=True)
        return 17
    print(f"rank {rank} finished without error", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
