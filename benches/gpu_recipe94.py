"""airbench94 on a GPU, three ways, in one call (each in its own fresh process):

  1. fastcifar: ``fastcifar.recipes.airbench94`` through the Trainer (the Rust loop, the fx graph of
     the recipe's nn.Module, the data set resident on the GPU), evaluated with TTA level 2;
  2. fastcifar: ``fastcifar.recipes.airbench94_muon`` the same way (airbench94_muon.py's recipe:
     Muon on the conv filters, 8 epochs at batch 2000; its optimizer runs its own step());
  3. the reference: ``airbench.train94`` and ``airbench.evaluate(..., tta_level=2)`` from the
     ``airbench`` package on the package index (never vendored here: ``make device-bundle`` puts its
     wheel in .device/, and benches/device_run.sh installs it). Without the package, or without
     CUDA (it calls ``.cuda()`` itself), its row says why it was skipped.

Each runs one warm-up training (cuDNN autotuning, the CUDA context; not counted), then ``--seeds``
runs. Per run: the test accuracy with TTA, the seconds of training and evaluation (airbench's own
accounting: whitening init, training, TTA evaluation), and the wall seconds from the data on disk
to the accuracy (reading the data set, building the loaders, the model and the trainer included).
Reported: the mean and spread (standard deviation, min, max) over the seeds. Targets (issue 21):
mean accuracy at least 94.0%, and wall time at most airbench94's in the same call, for each recipe.

Each run's result is printed (and written to ``--json``) as it comes, so a run cut short by
``--budget`` (seconds per contender) still leaves the ones before it.

    python benches/gpu_recipe94.py --data DATA_DIR [--seeds 5] [--json out.json] [--budget 120]
                                   [--recipes airbench94,airbench94_muon]

Smoke test on a CPU: ``--device cpu --subset 256 --test-subset 256 --batch-size 128 --epochs 1 --seeds 2``
(``--batch-size`` and ``--epochs`` then override both recipes' own).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import table  # noqa: E402

HEAD = """
import json, os, sys, time, torch
ROOT, DEVICE, SEEDS, RECIPE = {root!r}, {device!r}, {seeds}, {recipe!r}
SUBSET, TEST_SUBSET, BATCH, EPOCHS = {subset}, {test_subset}, {batch}, {epochs}
def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
def emit(**row):
    print(json.dumps(row), flush=True)
"""

FASTCIFAR = (
    HEAD
    + """
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
    r = recipes.RECIPES[RECIPE](train=train, test=test, device=DEVICE, seed=seed, log_every=10**6, **kw)
    r.trainer.fit(r.train_loader, epochs=r.epochs, max_steps=r.max_steps, callbacks=r.callbacks, progress=False)
    rep = r.trainer.evaluate(r.test_loader, progress=False, tta=r.tta)
    sync(); t2 = time.perf_counter()
    return dict(seed=seed, accuracy=rep.accuracy, seconds=t2 - t1, wall_seconds=t2 - t0, steps=r.max_steps,
                resident=r.train_loader.resident, amp=r.settings["amp"])
emit(warmup=once(10**6))
for s in range(SEEDS):
    emit(run=once(s))
"""
)

AIRBENCH = (
    HEAD
    + """
import tempfile
try:
    import airbench
except ImportError as e:
    emit(skipped=f"the airbench package is not installed ({{e}}); make device-bundle puts its wheel in .device/")
    sys.exit(0)
import fastcifar
# airbench reads cifar10/train.pt and cifar10/test.pt (uint8 NHWC images, labels, classes) under the
# working directory, and downloads them there if absent: write them from the same data first.
os.chdir(tempfile.mkdtemp())
os.makedirs("cifar10")
for train in (True, False):
    ds = fastcifar.CIFAR10(ROOT, train=train)
    n = (SUBSET if train else TEST_SUBSET) or len(ds)
    files = {{"images": torch.tensor(ds.data[:n]), "labels": torch.tensor(ds.targets[:n]), "classes": list(ds.classes)}}
    torch.save(files, os.path.join("cifar10", "train.pt" if train else "test.pt"))
# Read back through airbench's own loader (on the CPU): the files are in the form it expects.
check = airbench.CifarLoader("cifar10", train=False, batch_size=2000, gpu="cpu")
assert check.images.shape[1:] == (3, 32, 32) and len(check.labels) == len(check.images), check.images.shape
if not DEVICE.startswith("cuda") or not torch.cuda.is_available():
    emit(skipped=f"airbench runs only on CUDA (it calls .cuda() and times with CUDA events); its data files were "
                 f"written and read back ({{len(check.images)}} test images)")
    sys.exit(0)
kw = {{}}
if EPOCHS:
    kw["epochs"] = EPOCHS
def once(seed):
    torch.manual_seed(seed)
    sync(); t0 = time.perf_counter()
    loader = airbench.CifarLoader("cifar10", train=True, batch_size=BATCH or 1024, aug=dict(flip=True, translate=2),
                                  altflip=True)
    t1 = time.perf_counter()
    model = airbench.train94(loader, verbose=False, **kw)
    acc = airbench.evaluate(model, airbench.CifarLoader("cifar10", train=False, batch_size=2000), tta_level=2)
    sync(); t2 = time.perf_counter()
    return dict(seed=seed, accuracy=acc, seconds=t2 - t1, wall_seconds=t2 - t0)
emit(version=getattr(airbench, "__version__", "0.1.8 (pip)"))
emit(warmup=once(10**6))
for s in range(SEEDS):
    emit(run=once(s))
"""
)


def run(code: str, budget: float) -> dict:
    """Runs one contender's code in a fresh process; its JSON lines so far, even past ``budget``."""
    try:
        r = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=budget
        )
        out, err, timed_out = r.stdout, r.stderr, False
        failed = r.returncode != 0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        timed_out, failed = True, False
    result: dict = {"runs": []}
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        if "run" in row:
            result["runs"].append(row["run"])
        else:
            result.update(row)
    if timed_out:
        result["timed_out"] = f"stopped after {budget:.0f} s (--budget)"
    if failed:
        result["failed"] = err[-3000:]
    return result


def stats(result: dict) -> dict | None:
    runs = result["runs"]
    if not runs:
        return None
    acc = [r["accuracy"] for r in runs]

    def mean(k):
        return statistics.mean(r[k] for r in runs)

    return {
        "accuracy": statistics.mean(acc),
        "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "accuracy_min": min(acc),
        "accuracy_max": max(acc),
        "seconds": mean("seconds"),
        "seconds_std": statistics.stdev(r["seconds"] for r in runs) if len(runs) > 1 else 0.0,
        "wall_seconds": mean("wall_seconds"),
        "n": len(runs),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASTCIFAR_DATA", "data"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--subset", type=int, default=0, help="train on the first N images (smoke tests)")
    ap.add_argument("--test-subset", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=0, help="override the recipe's 1024 (smoke tests)")
    ap.add_argument("--epochs", type=float, default=0, help="override the recipe's 9.9 (smoke tests)")
    ap.add_argument("--budget", type=float, default=120, help="seconds per contender (its process is stopped after)")
    ap.add_argument(
        "--recipes", default="airbench94,airbench94_muon", help="fastcifar.recipes to run, comma-separated, in order"
    )
    ap.add_argument("--skip-airbench", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.seeds < 1:
        ap.error("--seeds must be at least 1")
    from fastcifar.recipes import RECIPES

    names = [n for n in a.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names:
        ap.error(f"--recipes: {unknown or a.recipes!r} not among {sorted(RECIPES)}")
    kw = dict(
        root=os.path.abspath(a.data),
        device=a.device,
        seeds=a.seeds,
        subset=a.subset,
        test_subset=a.test_subset,
        batch=a.batch_size,
        epochs=a.epochs,
    )
    results: dict = {"args": vars(a)}

    def save():
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(results, fh, indent=2)

    ours = {}
    for name in names:
        results[name] = ours[name] = run(FASTCIFAR.format(recipe=name, **kw), a.budget)
        save()
    ab = (
        {"runs": [], "skipped": "--skip-airbench"}
        if a.skip_airbench
        else run(AIRBENCH.format(recipe="", **kw), a.budget)
    )
    results["airbench"] = ab
    r = stats(ab)
    summary = {name: stats(res) for name, res in ours.items()}
    results["summary"] = {**summary, "airbench": r}

    def row(name, s, ref, why):
        if s is None:
            return [name, f"no runs: {why}", "", "", ""]
        spread = f"[{100 * s['accuracy_min']:.2f}, {100 * s['accuracy_max']:.2f}]"
        acc = f"{100 * s['accuracy']:.2f}% +- {100 * s['accuracy_std']:.2f} {spread}"
        vs = f"{s['wall_seconds'] / ref['wall_seconds']:.2f}x" if ref else "n/a"
        return [name, acc, f"{s['seconds']:.2f} +- {s['seconds_std']:.2f}", f"{s['wall_seconds']:.2f}", vs]

    def why(res):
        return res.get("skipped") or res.get("timed_out") or (res.get("failed") or "")[-300:]

    rows = [row(f"fastcifar.recipes.{n} (Trainer)", summary[n], r, why(ours[n])) for n in names]
    rows.append(row("airbench94 (airbench package train94)", r, r, why(ab)))
    print(
        f"airbench94 recipes, {a.seeds} seeds after a warm-up run, device {a.device}"
        + (f", subset {a.subset}" if a.subset else "")
        + "\n"
    )
    print(
        table(
            ["run", "test acc (TTA 2; mean +- std [min, max])", "train+eval s", "wall s from disk", "wall vs airbench"],
            rows,
        )
    )
    verdict = {}
    for n, f in summary.items():
        verdict[f"{n}_accuracy_at_least_94"] = bool(f) and f["accuracy"] >= 0.94
        verdict[f"{n}_wall_at_most_airbench"] = bool(f) and bool(r) and f["wall_seconds"] <= r["wall_seconds"]
    results["targets"] = verdict
    print("\ntargets:", json.dumps(verdict))
    for name, res in [*ours.items(), ("airbench", ab)]:
        if res.get("failed"):
            print(f"\n{name} failed:\n{res['failed']}")
    save()
    if any(res.get("failed") or not res["runs"] for res in ours.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
