"""airbench94 on a GPU, two ways, in one call (each in its own fresh process):

  1. fastcifar: ``fastcifar.recipes.airbench94`` through the Trainer (Rust loop, fx graph of the
     recipe's nn.Module, loader pinned and delivering to the GPU), evaluated with TTA level 2;
  2. the airbench94 reference: ``airbench.train94`` and ``airbench.evaluate(..., tta_level=2)`` from
     the ``airbench`` package on PyPI (never vendored here: ``make device-bundle`` downloads it into
     .device/, and benches/device_run.sh installs it). Without the package, or without CUDA (it
     calls ``.cuda()`` itself), its row says why it was skipped.

Each runs one warm-up training (cuDNN autotuning, CUDA context; not counted), then ``--seeds``
runs. Per run: test accuracy with TTA, the seconds of training and evaluation (airbench's own
accounting: whitening init, training, TTA evaluation), and the wall seconds from the data on disk
to the accuracy (reading the data set, building the loaders, the model and the trainer included).
Targets (issue 16): mean accuracy at least 94.0%, wall time at most airbench94's.

    python benches/gpu_recipe94.py --data DATA_DIR [--seeds 5] [--json out.json]

Smoke test on a CPU: ``--device cpu --subset 512 --test-subset 256 --batch-size 128 --epochs 1 --seeds 2``.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import run_timed, table  # noqa: E402

HEAD = """
import json, os, time, torch
ROOT, DEVICE, SEEDS, SUBSET, TEST_SUBSET, BATCH, EPOCHS = {root!r}, {device!r}, {seeds}, {subset}, {test_subset}, {batch}, {epochs}
def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
def summary(runs, **extra):
    return json.dumps(dict(runs=runs, **extra))
"""

FASTCIFAR = HEAD + """
import fastcifar
from fastcifar import recipes
kw = {{}}
if BATCH:
    kw["batch_size"] = BATCH
if EPOCHS:
    kw["epochs"] = EPOCHS
def once(seed):
    sync(); t0 = time.perf_counter()
    train, test = fastcifar.CIFAR10(ROOT, train=True), fastcifar.CIFAR10(ROOT, train=False)
    if SUBSET:
        train = train.subset(range(SUBSET))
    if TEST_SUBSET:
        test = test.subset(range(TEST_SUBSET))
    t1 = time.perf_counter()
    r = recipes.airbench94(train=train, test=test, device=DEVICE, seed=seed, log_every=10**6, **kw)
    r.trainer.fit(r.train_loader, epochs=r.epochs, max_steps=r.max_steps, callbacks=r.callbacks, progress=False)
    rep = r.trainer.evaluate(r.test_loader, progress=False, tta=r.tta)
    sync(); t2 = time.perf_counter()
    return dict(seed=seed, accuracy=rep.accuracy, seconds=t2 - t1, wall_seconds=t2 - t0, steps=r.max_steps)
once(10**6)  # warm-up, not counted
print(summary([once(s) for s in range(SEEDS)]))
"""

AIRBENCH = HEAD + """
import tempfile
try:
    import airbench
except ImportError as e:
    print(summary([], skipped=f"the airbench package is not installed ({{e}}); make device-bundle downloads it"))
    raise SystemExit(0)
import fastcifar
# airbench reads cifar10/train.pt and cifar10/test.pt (uint8 NHWC images, labels, classes) under the
# working directory, and downloads them there if absent: write them from the same data first.
os.chdir(tempfile.mkdtemp())
os.makedirs("cifar10")
for train in (True, False):
    ds = fastcifar.CIFAR10(ROOT, train=train)
    n = (SUBSET if train else TEST_SUBSET) or len(ds)
    torch.save({{"images": torch.tensor(ds.data[:n]), "labels": torch.tensor(ds.targets[:n]), "classes": list(ds.classes)}},
               os.path.join("cifar10", "train.pt" if train else "test.pt"))
# Read back through airbench's own loader (on the CPU): the files are in the form it expects.
check = airbench.CifarLoader("cifar10", train=False, batch_size=2000, gpu="cpu")
assert check.images.shape[1:] == (3, 32, 32) and len(check.labels) == len(check.images), check.images.shape
if not DEVICE.startswith("cuda") or not torch.cuda.is_available():
    print(summary([], skipped=f"airbench runs only on CUDA (it calls .cuda() and times with CUDA events); its data files were "
                             f"written and read back ({{len(check.images)}} test images)"))
    raise SystemExit(0)
kw = {{}}
if EPOCHS:
    kw["epochs"] = EPOCHS
def once(seed):
    torch.manual_seed(seed)
    sync(); t0 = time.perf_counter()
    loader = airbench.CifarLoader("cifar10", train=True, batch_size=BATCH or 1024, aug=dict(flip=True, translate=2), altflip=True)
    t1 = time.perf_counter()
    model = airbench.train94(loader, verbose=False, **kw)
    acc = airbench.evaluate(model, airbench.CifarLoader("cifar10", train=False, batch_size=2000), tta_level=2)
    sync(); t2 = time.perf_counter()
    return dict(seed=seed, accuracy=acc, seconds=t2 - t1, wall_seconds=t2 - t0)
once(10**6)
print(summary([once(s) for s in range(SEEDS)], version=getattr(airbench, "__version__", "0.1.8 (pip)")))
"""


def stats(result):
    runs = result["runs"]
    if not runs:
        return None
    acc = [r["accuracy"] for r in runs]
    mean = lambda k: statistics.mean(r[k] for r in runs)
    return {"accuracy": statistics.mean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "seconds": mean("seconds"), "wall_seconds": mean("wall_seconds"), "n": len(runs)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASTCIFAR_DATA", "data"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--subset", type=int, default=0, help="train on the first N images (smoke tests)")
    ap.add_argument("--test-subset", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=0, help="override the recipe's 1024 (smoke tests)")
    ap.add_argument("--epochs", type=float, default=0, help="override the recipe's 9.9 (smoke tests)")
    ap.add_argument("--skip-airbench", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.seeds < 1:
        ap.error("--seeds must be at least 1")
    kw = dict(root=os.path.abspath(a.data), device=a.device, seeds=a.seeds, subset=a.subset, test_subset=a.test_subset,
              batch=a.batch_size, epochs=a.epochs)
    fc = run_timed(FASTCIFAR.format(**kw), 1)[0]
    ab = {"runs": [], "skipped": "--skip-airbench"} if a.skip_airbench else run_timed(AIRBENCH.format(**kw), 1)[0]
    f, r = stats(fc), stats(ab)
    row = lambda name, s, ref: [name, f"{100 * s['accuracy']:.2f}% +- {100 * s['accuracy_std']:.2f}", f"{s['seconds']:.2f}",
                                f"{s['wall_seconds']:.2f}", f"{s['wall_seconds'] / ref['wall_seconds']:.2f}x" if ref else "n/a"]
    rows = [row("fastcifar.recipes.airbench94 (Trainer)", f, r)]
    rows.append(row("airbench94 (airbench package)", r, r) if r else ["airbench94 (airbench package)", "skipped: " + ab["skipped"], "", "", ""])
    print(f"airbench94 recipe, {f['n']} seeds, device {a.device}" + (f", subset {a.subset}" if a.subset else "") + "\n")
    print(table(["run", "test acc (TTA, mean +- std)", "train+eval s", "wall s from disk", "wall vs airbench"], rows))
    verdict = {"accuracy_at_least_94": f["accuracy"] >= 0.94, "wall_at_most_airbench": bool(r) and f["wall_seconds"] <= r["wall_seconds"]}
    print("\ntargets:", json.dumps(verdict))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"fastcifar": fc, "airbench": ab, "summary": {"fastcifar": f, "airbench": r}, "targets": verdict, "args": vars(a)}, fh, indent=2)


if __name__ == "__main__":
    main()
