"""The airbench package's own train94 on a CPU, on the same CIFAR-10 files, beside
fastcifar.recipes.airbench94: what the recipe itself reaches on this data, so fastcifar's accuracy is
read against a reference trained on the same files (../shared/datasets is CIFAR-10 stored as JPEG,
quality 75 with 4:2:0 chroma, so published numbers do not apply to it).

    pip install --no-deps airbench         # the reference, from the package index (never vendored)
    python benches/bench_airbench_cpu.py --data DATA_DIR [--epochs 9.9] [--seeds 1] [--sides airbench,ours]

Each side runs in a fresh process, with 2 torch threads, seed by seed, and prints its test accuracy
(no TTA) after every epoch and with TTA 2 at the end:
- airbench: ``airbench.train94`` in float32. airbench is written for CUDA only: its network is made
  with ``.half().cuda()``, its loader loads onto GPU 0 in fp16 and it times with CUDA events. Here,
  in its own process, ``.half()`` / ``.cuda()`` leave a module as it is, the loader loads onto the
  CPU in float32, and the events read ``time.perf_counter``; nothing else of it changes. fp16 is
  left out as half-precision convolutions are not what a CPU runs, and torch's CPU bf16 autocast
  around train94 does not train this network (test accuracy 11.7% after half an epoch, against
  54.2% in float32, measured on the AMD EPYC VM), so float32 is the reference.
- ours: ``fastcifar.recipes.airbench94(..., amp=...)`` with the same epochs and seed, for each
  ``--amp`` given (default: bf16, float32).
A bench, not a test: it prints, it asserts nothing.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import run_timed  # noqa: E402

AIRBENCH = """
import json, os, sys, tempfile, time
import torch
from torch import nn
torch.set_num_threads(2)
import airbench
import airbench.utils as U
import airbench.lib_airbench94 as A
import fastcifar
ROOT, EPOCHS, SEED = {root!r}, {epochs!r}, {seed!r}
# airbench reads cifar10/train.pt and test.pt (uint8 NHWC images, labels, classes) under the working
# directory: write them from the same files fastcifar reads.
os.chdir(tempfile.mkdtemp())
os.makedirs("cifar10")
for train in (True, False):
    ds = fastcifar.CIFAR10(ROOT, train=train)
    files = {{"images": torch.tensor(ds.data), "labels": torch.tensor(ds.targets), "classes": list(ds.classes)}}
    torch.save(files, os.path.join("cifar10", "train.pt" if train else "test.pt"))
# The CUDA-only parts, made CPU ones (see the module docstring); the training code is airbench's.
nn.Module.half = lambda self: self
nn.Module.cuda = lambda self, *a, **k: self
class Event:
    def __init__(self, **kw): self.t = 0.0
    def record(self): self.t = time.perf_counter()
    def elapsed_time(self, end): return 1000 * (end.t - self.t)
torch.cuda.Event = Event
torch.cuda.synchronize = lambda *a: None
class CpuLoader(U.CifarLoader):
    def __init__(self, path, train=True, batch_size=500, aug=None, drop_last=None, shuffle=None, altflip=False, gpu=0):
        super().__init__(path, train, batch_size, aug, drop_last, shuffle, altflip, gpu="cpu")
        self.images = self.images.float()
U.CifarLoader = A.CifarLoader = CpuLoader
curve = []
_evaluate = U.evaluate
def evaluate(model, loader, tta_level=0):  # airbench's own evaluation, also kept for the curve
    acc = _evaluate(model, loader, tta_level)
    curve.append((tta_level, acc))
    return acc
U.evaluate = evaluate
torch.manual_seed(SEED)
t0 = time.perf_counter()
A.train94(epochs=EPOCHS, run=SEED, verbose=True)
wall = time.perf_counter() - t0
epochs = [a for level, a in curve[:-1]]
print(json.dumps({{"curve": epochs, "tta2": curve[-1][1], "seconds": wall}}))
"""

OURS = """
import json, time, torch
torch.set_num_threads(2)
from fastcifar import recipes
ROOT, EPOCHS, SEED, AMP = {root!r}, {epochs!r}, {seed!r}, {amp!r}
t0 = time.perf_counter()
r = recipes.airbench94(ROOT, device="cpu", amp=AMP, epochs=EPOCHS, seed=SEED)
h = r.trainer.fit(r.train_loader, r.test_loader, epochs=r.epochs, max_steps=r.max_steps, callbacks=r.callbacks,
                  progress=False)
tta2 = r.trainer.evaluate(r.test_loader, progress=False, tta=2).accuracy
wall = time.perf_counter() - t0
print(json.dumps({{"curve": h["val_accuracy"], "tta2": tta2, "seconds": wall}}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASTCIFAR_DATA", "data"))
    ap.add_argument("--epochs", type=float, default=9.9)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--sides", default="airbench,ours")
    ap.add_argument("--amp", default="bf16,float32", help="fastcifar's precisions, comma-separated")
    a = ap.parse_args()
    precisions = a.amp.split(",")
    unknown = [p for p in precisions if p not in ("bf16", "float32")]
    if unknown:
        ap.error(f"--amp: unknown precision(s) {unknown} (bf16, float32)")
    root = os.path.abspath(a.data)
    sides = []
    for s in a.sides.split(","):
        if s == "airbench":
            sides.append(("airbench train94, float32", AIRBENCH, {}))
        elif s == "ours":
            for amp in precisions:
                sides.append((f"fastcifar.recipes.airbench94, {amp}", OURS, {"amp": amp == "bf16"}))
        else:
            raise SystemExit(f"--sides: unknown side {s!r} (airbench, ours)")
    results: dict = {label: [] for label, _, _ in sides}
    for seed in range(a.seeds):
        for label, code, kw in sides:
            r = run_timed(code.format(root=root, epochs=a.epochs, seed=seed, **kw), 1)[0]
            results[label].append(r)
            print(f"seed {seed}: {label}: {json.dumps(r)}", file=sys.stderr, flush=True)
    print(f"airbench94, {a.epochs} epochs, {a.seeds} seed(s), data {root}; test accuracy (mean over seeds)\n")
    n = min(len(r["curve"]) for rs in results.values() for r in rs)
    print("| run | " + " | ".join(f"epoch {i + 1}" for i in range(n)) + " | final, TTA 2 | wall s |")
    print("| --- |" + " --- |" * (n + 2))
    for label, rs in results.items():
        cells = [f"{100 * statistics.mean(r['curve'][i] for r in rs):.2f}%" for i in range(n)]
        tta = [100 * r["tta2"] for r in rs]
        spread = f" ({min(tta):.2f} to {max(tta):.2f})" if len(tta) > 1 else ""
        wall = statistics.median(r["seconds"] for r in rs)
        print(f"| {label} | " + " | ".join(cells) + f" | {statistics.mean(tta):.2f}%{spread} | {wall:.0f} |")


if __name__ == "__main__":
    main()
