"""Decode CIFAR-10 (train, 50,000 images) with fastcifar and with torchvision, in one run.

    python benches/bench_data.py --data DATA_DIR [--jpeg-tree DIR] [--repeat 3]

DATA_DIR is what ../shared/datasets/build_cifar10.py writes. Every measurement runs in a fresh
process (page cache warm, allocator cold, imports excluded; the folder rows alternate with
torchvision's) and the median of --repeat is shown.
Targets (issue 2): >= 5x torchvision from extracted files, archives within 1.5x of `gzip -dc`,
ImageFolder >= 4x torchvision's images/s. The mmap=True row keeps the pickles' pixels in the page
cache (populated, no copy); the other rows copy them, as torchvision does.
"""

import argparse
import os
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import median, run_timed, table  # noqa: E402

FC = """
import json, time, fastcifar
t = time.perf_counter(); ds = fastcifar.CIFAR10({root!r}, train=True, mmap={mmap}); dt = time.perf_counter() - t
assert len(ds) == 50000 and ds.mapped == {mmap}, (len(ds), ds.mapped)
print(json.dumps({{"seconds": dt, "layout": ds.layout}}))
"""
TV = """
import json, time, torchvision.datasets.cifar as c
c.check_integrity = lambda *a, **k: True  # the shared data is re-packed: its md5 is not the official one
t = time.perf_counter(); ds = c.CIFAR10({root!r}, train=True); dt = time.perf_counter() - t
assert len(ds) == 50000
print(json.dumps({{"seconds": dt}}))
"""
TV_ARCHIVE = """
import json, time, tarfile, tempfile, torchvision.datasets.cifar as c
c.check_integrity = lambda *a, **k: True
t = time.perf_counter()
with tempfile.TemporaryDirectory() as d:
    with tarfile.open({archive!r}) as tar: tar.extractall(d)  # what download=True does
    ds = c.CIFAR10(d, train=True)
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt}}))
"""
GZIP = """
import json, subprocess, time
t = time.perf_counter(); subprocess.run(["gzip", "-dc", {archive!r}], stdout=subprocess.DEVNULL, check=True)
print(json.dumps({{"seconds": time.perf_counter() - t}}))
"""
FC_FOLDER = """
import json, time, fastcifar
t = time.perf_counter(); n = 0
for split in ("train", "test"):
    n += len(fastcifar.ImageFolder({tree!r} + "/" + split))
print(json.dumps({{"seconds": time.perf_counter() - t, "images": n}}))
"""
TV_FOLDER = """
import json, time, torch, torchvision
from torchvision.transforms import PILToTensor
t = time.perf_counter(); n = 0
for split in ("train", "test"):
    ds = torchvision.datasets.ImageFolder({tree!r} + "/" + split, transform=PILToTensor())
    if {workers} == 0:
        xs = [ds[i][0] for i in range(len(ds))]
    else:
        dl = torch.utils.data.DataLoader(ds, batch_size=500, num_workers={workers})
        xs = [x for x, _ in dl]
    n += len(ds)
print(json.dumps({{"seconds": time.perf_counter() - t, "images": n}}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASTCIFAR_DATA", "data"))
    ap.add_argument(
        "--jpeg-tree", default=None, help="unpacked cifar10-jpeg.tar.gz (default: DATA/cifar10-jpeg, made if missing)"
    )
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--folders-only", action="store_true", help="only the extracted pickle and binary folders")
    a = ap.parse_args()
    data = os.path.abspath(a.data)
    py, bn = f"{data}/cifar-10-batches-py", f"{data}/cifar-10-batches-bin"
    pya, bna = f"{data}/cifar-10-python.tar.gz", f"{data}/cifar-10-binary.tar.gz"
    tree = a.jpeg_tree or f"{data}/cifar10-jpeg"
    if not os.path.isdir(tree):
        with tarfile.open(os.path.join(a.shared, "cifar10-jpeg.tar.gz")) as t:
            t.extractall(tree)
    r = a.repeat
    folders = (("pickle folder", py, False), ("binary folder", bn, False), ("pickle folder, mmap=True", py, True))
    tvs, fcs = [], {name: [] for name, _, _ in folders}
    for _ in range(r):  # alternating, so that machine noise hits both sides alike
        tvs += run_timed(TV.format(root=data), 1)
        for name, root, mmap in folders:
            fcs[name] += run_timed(FC.format(root=root, mmap=mmap), 1)
    tv = median(tvs)
    rows = []
    for name, _, _ in folders:
        fc = median(fcs[name])
        per_run = sorted(t["seconds"] / f["seconds"] for t, f in zip(tvs, fcs[name]))
        rows.append(
            [
                name,
                f"{fc * 1000:.0f} ms",
                f"{tv * 1000:.0f} ms (pickles)",
                f"{tv / fc:.1f}x faster (runs {per_run[0]:.1f}x to {per_run[-1]:.1f}x)",
            ]
        )
    if a.folders_only:
        print(f"CIFAR-10 train set decode, median of {r} alternating fresh processes, {os.cpu_count()} cores\n")
        print(table(["form", "fastcifar", "torchvision (same run)", "ratio"], rows))
        return
    for name, arch in (("python archive", pya), ("binary archive", bna)):
        fc = median(run_timed(FC.format(root=arch, mmap=False), r))
        gz = median(run_timed(GZIP.format(archive=arch), r))
        tva = median(run_timed(TV_ARCHIVE.format(archive=pya), r))
        rows.append(
            [
                name,
                f"{fc * 1000:.0f} ms",
                f"gzip -dc {gz * 1000:.0f} ms; torchvision extract+load {tva * 1000:.0f} ms",
                f"{fc / gz:.2f}x gzip -dc; {tva / fc:.1f}x faster than torchvision",
            ]
        )
    fcf = run_timed(FC_FOLDER.format(tree=tree), r)
    n = fcf[0]["images"]
    fc_ips = n / median(fcf)
    tv0 = n / median(run_timed(TV_FOLDER.format(tree=tree, workers=0), 1))
    tv2 = n / median(run_timed(TV_FOLDER.format(tree=tree, workers=2), 1))
    rows.append(
        [
            f"ImageFolder, {n} JPEGs",
            f"{fc_ips:,.0f} img/s",
            f"PIL {tv0:,.0f} img/s; PIL + 2 workers {tv2:,.0f} img/s",
            f"{fc_ips / tv0:.1f}x / {fc_ips / tv2:.1f}x",
        ]
    )
    print(f"CIFAR-10 train set decode, median of {r} fresh processes, {os.cpu_count()} cores\n")
    print(table(["form", "fastcifar", "baseline (same run)", "ratio"], rows))


if __name__ == "__main__":
    main()
