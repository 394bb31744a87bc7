"""CPU training throughput of the seed's ImageClassifier: fastcifar's Rust loop against the seed
tutorial's plain PyTorch loop (torchvision CIFAR10 + DataLoader(num_workers=2) + Adam), with the
same torch thread count, on the same real data, in one run.

    python benches/bench_train_cpu.py --data DATA_DIR [--steps 12] [--batch-size 128]

Each side runs in a fresh process and is timed the same way: one loop over the epoch, a time mark
after every step, and the --steps steps after --warmup steps are timed (fastcifar: one fit whose
callback takes the marks and stops it; the seed loop: its own loop, including its per-step
loss.item()). Target (issue 4): ratio >= 1.0 (our loop and data feeding cost nothing next to the model).
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import run_timed, table  # noqa: E402

COMMON = """
import json, time, torch
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
torch.manual_seed(0)
STEPS, WARM, BS = {steps}, {warm}, {bs}
"""
FC = COMMON + """
import fastcifar
from fastcifar import transforms as T
t = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
ds = fastcifar.CIFAR10({root!r}, train=True, transform=t)
loader = fastcifar.DataLoader(ds, batch_size=BS, shuffle=True, seed=0)
tr = fastcifar.Trainer(fastcifar.models.ImageClassifier(), optimizer=fastcifar.optim.Adam(lr=1e-3, weight_decay=1e-4), device="cpu",
                       log_every=1)
marks = []
def mark(info):                                    # a time mark after every step, as the seed loop takes
    marks.append(time.perf_counter())
    return len(marks) < STEPS + WARM
tr.fit(loader, epochs=1, progress=False, callbacks=[mark])
dt = marks[-1] - marks[WARM - 1]                   # the STEPS steps after the warm-up ones
print(json.dumps({{"seconds": dt, "images": BS * (len(marks) - WARM), "threads": torch.get_num_threads()}}))
"""
SEED = COMMON + """
import torch.nn as nn, torchvision, torchvision.transforms as transforms, torchvision.datasets.cifar as c
from fastcifar.reference import ImageClassifier   # the seed's class, verbatim
c.check_integrity = lambda *a, **k: True
t = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=4), transforms.ToTensor(),
                        transforms.Normalize(MEAN, STD)])
trainset = c.CIFAR10({root!r}, train=True, transform=t)
trainloader = torch.utils.data.DataLoader(trainset, batch_size=BS, shuffle=True, num_workers=2)
model = ImageClassifier(num_classes=10)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=0.001, weight_decay=1e-4)
model.train()
marks = []
for i, (images, labels) in enumerate(trainloader):
    optimizer.zero_grad()
    loss = criterion(model(images), labels)
    loss.backward()
    optimizer.step()
    running = loss.item()                          # as the seed does every step
    marks.append(time.perf_counter())
    if i + 1 == STEPS + WARM:
        break
dt = marks[-1] - marks[WARM - 1]                   # the STEPS steps after the warm-up ones
print(json.dumps({{"seconds": dt, "images": BS * (len(marks) - WARM), "threads": torch.get_num_threads()}}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASTCIFAR_DATA", "data"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator and oneDNN warm-up)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="alternate the two sides this many times; medians are compared")
    a = ap.parse_args()
    root = os.path.abspath(a.data)
    fcs, sds = [], []
    for _ in range(a.repeat):  # alternating, so that machine noise hits both sides alike
        fcs += run_timed(FC.format(root=root, steps=a.steps, warm=a.warmup, bs=a.batch_size), 1)
        sds += run_timed(SEED.format(root=root, steps=a.steps, warm=a.warmup, bs=a.batch_size), 1)
    med = lambda rs: statistics.median(r["images"] / r["seconds"] for r in rs)
    f, s = med(fcs), med(sds)
    fc = fcs[0]
    print(f"ImageClassifier training on CPU, batch {a.batch_size}, {a.steps} timed steps after {a.warmup}, torch threads: {fc['threads']}, "
          f"median of {a.repeat} alternating runs\n")
    ips = lambda r: r["images"] / r["seconds"]
    pairs = sorted(ips(x) / ips(y) for x, y in zip(fcs, sds))
    print(table(["loop", "images/s", "ratio"], [
        ["fastcifar.Trainer.fit (Rust loop, Rust loader)", f"{f:,.1f}", f"{f / s:.2f}x (runs {pairs[0]:.2f}x to {pairs[-1]:.2f}x)"],
        ["seed tutorial loop (plain PyTorch + torchvision, num_workers=2)", f"{s:,.1f}", "1.00x"],
    ]))


if __name__ == "__main__":
    main()
