"""One augmented CIFAR-10 epoch (the seed tutorial's train transform, batch 128, shuffled, float32
normalised output): fastcifar against torchvision's DataLoader (num_workers=2) and against the
memory-bandwidth floor (converting the uint8 train set to float32), in one run. A second fastcifar
row is the drop-in: the seed's own torchvision Compose and DataLoader arguments, with only the
import line changed (fastcifar.CIFAR10, fastcifar.DataLoader).

    python benches/bench_loader.py --data DATA_DIR [--epochs 5] [--repeat 3]

Targets (issues 3 and 13): >= 100x torchvision's images/s, for both fastcifar rows; within 3x of
the floor; no per-epoch copy of the data set (peak RSS reported).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import run_timed, table  # noqa: E402

SEED_T = """
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
"""
# Times `loader` over epochs: the first warms up the pool and allocator; prints one JSON line.
TIMING = """
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
rss_loaded = rss()
times = []
for e in range({epochs} + 1):
    t0 = time.perf_counter(); n = 0
    for x, y in loader:
        n += len(y)
    times.append(time.perf_counter() - t0)
print(json.dumps({{"seconds": statistics.median(times[1:]), "images": n, "rss_loaded_mb": rss_loaded,
                  "rss_end_mb": rss(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
FC = (
    SEED_T
    + """
import json, resource, statistics, time, fastcifar
from fastcifar import transforms as T
t = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
ds = fastcifar.CIFAR10({root!r}, train=True, transform=t)
loader = fastcifar.DataLoader(ds, batch_size=128, shuffle=True, seed=0)
"""
    + TIMING
)
# The seed's code, verbatim but for the import line: torchvision's transforms, num_workers=2.
FC_SEED = (
    SEED_T
    + """
import json, resource, statistics, time, fastcifar, warnings
import torchvision.transforms as transforms
from fastcifar import DataLoader
warnings.simplefilter("error")  # the seed's pipeline must stay on the fused path
transform_train = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=4),
                                      transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
trainset = fastcifar.CIFAR10({root!r}, train=True, download=True, transform=transform_train)
loader = DataLoader(trainset, batch_size=128, shuffle=True, num_workers=2)
"""
    + TIMING
)
TV = (
    SEED_T
    + """
import json, resource, time, torch, torchvision, torchvision.transforms as T, torchvision.datasets.cifar as c
c.check_integrity = lambda *a, **k: True
t = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
ds = c.CIFAR10({root!r}, train=True, transform=t)
loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, num_workers=2)
t0 = time.perf_counter(); n = 0
for i, (x, y) in enumerate(loader):
    n += len(y)
    if i + 1 == {batches}:
        break
print(json.dumps({{"seconds": time.perf_counter() - t0, "images": n,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
)
FLOOR = """
import json, statistics, time, torch, numpy as np, fastcifar
x = torch.from_numpy(np.ascontiguousarray(fastcifar.CIFAR10({root!r}, train=True).data))
fresh, reused = [], []
out = torch.empty(x.shape, dtype=torch.float32)
for _ in range(4):
    t0 = time.perf_counter(); y = x.float(); fresh.append(time.perf_counter() - t0); del y
    t0 = time.perf_counter(); out.copy_(x); reused.append(time.perf_counter() - t0)
print(json.dumps({{"seconds": statistics.median(fresh[1:]), "reused": statistics.median(reused[1:])}}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASTCIFAR_DATA", "data"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--tv-batches", type=int, default=0, help="stop torchvision after this many batches (0: whole epoch)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="alternate both sides this many times; medians are compared")
    a = ap.parse_args()
    root = os.path.abspath(a.data)
    fcs, seeds, tvs = [], [], []
    for _ in range(a.repeat):  # alternating, so that machine noise hits all sides alike
        fcs += run_timed(FC.format(root=root, epochs=a.epochs), 1)
        seeds += run_timed(FC_SEED.format(root=root, epochs=a.epochs), 1)
        tvs += run_timed(TV.format(root=root, batches=a.tv_batches or -1), 1)

    def by_time(rs):  # the median run by time per image
        return sorted(rs, key=lambda r: r["seconds"] / r["images"])[len(rs) // 2]

    fc, sd, tv = by_time(fcs), by_time(seeds), by_time(tvs)
    fl = run_timed(FLOOR.format(root=root), 1)[0]
    tv_ips = tv["images"] / tv["seconds"]

    def row(name, r):
        ips = r["images"] / r["seconds"]
        return [
            name,
            f"{r['seconds']:.3f} s",
            f"{ips:,.0f}",
            f"{ips / tv_ips:.0f}x",
            f"{r['seconds'] / fl['seconds']:.2f}x",
            f"{r['peak_rss_mb']:.0f} MB (loaded {r['rss_loaded_mb']:.0f}, end {r['rss_end_mb']:.0f})",
        ]

    rows = [
        row("fastcifar.DataLoader (Rust, fused)", fc),
        row("seed code, imports swapped (torchvision Compose, num_workers=2)", sd),
        [
            "torchvision DataLoader, num_workers=2",
            f"{tv['seconds'] * 50000 / tv['images']:.2f} s",
            f"{tv_ips:,.0f}",
            "1x",
            f"{tv['seconds'] * 50000 / tv['images'] / fl['seconds']:.0f}x",
            f"{tv['peak_rss_mb']:.0f} MB (main process)",
        ],
        [
            "floor: uint8 -> float32 of the train set",
            f"{fl['seconds']:.3f} s",
            f"{50000 / fl['seconds']:,.0f}",
            "",
            "1x",
            f"into a reused tensor: {fl['reused']:.3f} s",
        ],
    ]

    def ratio(f, t):
        return "%.0fx" % ((t["seconds"] / t["images"]) / (f["seconds"] / f["images"]))

    per_run = ", ".join(ratio(f, t) for f, t in zip(fcs, tvs))
    per_seed = ", ".join(ratio(f, t) for f, t in zip(seeds, tvs))
    print(
        "One augmented epoch of CIFAR-10 train (flip, crop 32 pad 4, ToTensor, Normalize; batch 128), "
        f"{os.cpu_count()} cores, median of {a.repeat} alternating runs "
        f"(ratio per run: {per_run}; seed code: {per_seed})\n"
    )
    print(table(["pipeline", "epoch", "images/s", "vs torchvision", "vs floor", "peak RSS"], rows))


if __name__ == "__main__":
    main()
