"""CPU training throughput of the seed's ImageClassifier: fastcifar's Rust loop against the seed
tutorial's plain PyTorch loop (torchvision CIFAR10 + DataLoader(num_workers=2) + Adam), with the
same torch thread count, on the same real data, in one run.

    python benches/bench_train_cpu.py --data DATA_DIR [--steps 12] [--batch-size 128]

Each side runs in a fresh process: 2 warm-up steps, then --steps timed steps (fastcifar: one fit
over them with default logging; the seed loop: its own loop, including its per-step loss.item()). Target (issue 4):
ratio >= 1.0 (our loop and data feeding cost nothing next to the model).
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
STEPS, WARM, BS = {steps}, 2, {bs}
"""
FC = COMMON + """
import fastcifar
from fastcifar import transforms as T
t = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
ds = fastcifar.CIFAR10({root!r}, train=True, transform=t)
warm = fastcifar.DataLoader(ds.subset(range(BS * WARM)), batch_size=BS, shuffle=True, seed=1)
loader = fastcifar.DataLoader(ds.subset(range(BS * WARM, BS * (WARM + STEPS))), batch_size=BS, shuffle=True, seed=0)
tr = fastcifar.Trainer(fastcifar.models.ImageClassifier(), optimizer=fastcifar.optim.Adam(lr=1e-3, weight_decay=1e-4), device="cpu")
tr.fit(warm, epochs=1, progress=False)            # warm-up steps, untimed
t0 = time.perf_counter()
tr.fit(loader, epochs=1, progress=False)          # STEPS steps, default logging
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "images": BS * STEPS, "threads": torch.get_num_threads()}}))
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
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="alternate the two sides this many times; medians are compared")
    a = ap.parse_args()
    root = os.path.abspath(a.data)
    fcs, sds = [], []
    for _ in range(a.repeat):  # alternating, so that machine noise hits both sides alike
        fcs += run_timed(FC.format(root=root, steps=a.steps, bs=a.batch_size), 1)
        sds += run_timed(SEED.format(root=root, steps=a.steps, bs=a.batch_size), 1)
    med = lambda rs: statistics.median(r["images"] / r["seconds"] for r in rs)
    f, s = med(fcs), med(sds)
    fc = fcs[0]
    print(f"ImageClassifier training on CPU, batch {a.batch_size}, {a.steps} timed steps, torch threads: {fc['threads']}, "
          f"median of {a.repeat} alternating runs\n")
    print(table(["loop", "images/s", "ratio"], [
        ["fastcifar.Trainer.fit (Rust loop, Rust loader)", f"{f:,.1f}", f"{f / s:.2f}x"],
        ["seed tutorial loop (plain PyTorch + torchvision, num_workers=2)", f"{s:,.1f}", "1.00x"],
    ]))


if __name__ == "__main__":
    main()
