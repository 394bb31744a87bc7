"""CPU training throughput: fastcifar's Rust loop against plain PyTorch loops, with the same torch
thread count, on the same real data, in one run. Four pairs:

- builtin: fastcifar.models.ImageClassifier on the engine, against the seed tutorial's loop
  (torchvision CIFAR10 + DataLoader(num_workers=2) + Adam), batch 128;
- own: the seed's ImageClassifier class as written in the tutorial (a user's module, captured with
  torch.fx) on the engine, against the same seed loop, batch 128;
- tiny: a tiny user module at batch 32, where the per-step overhead dominates (as it does on a GPU),
  against a plain PyTorch loop over batches already in memory (so the loop alone is compared);
- tiny-step: the same with torch.optim.RMSprop, which the engine runs through its own step().

    python benches/bench_train_cpu.py --data DATA_DIR [--steps 12] [--rows amp,amp-expert,equal-seed,...]

Each side runs in a fresh process. builtin and own are timed the same way on both sides: one loop
over the epoch, a time mark after every step, and the --steps steps after --warmup steps are timed
(fastcifar: one fit whose callback takes the marks and stops it; the seed loop: its own loop,
including its per-step loss.item()). The tiny rows time the whole run over the --steps batches
after --warmup batches (fastcifar: one fit of those batches after a warm-up fit, progress every
log_every=20 steps as by default; the plain loop: its loop with loss.item() every step), since a
Python callback every step would be most of what is measured. Targets: builtin and own >= 1.0x;
tiny >= 1.2x; tiny-step is reported (the cost of the own-step() path).

The mixed-precision and equal-terms rows (issue 22), timed as whole fits against loops over
batches in memory:
- amp: Trainer(amp=True) with the seed's own class against the seed's float32 loop: >= 1.8x;
- amp-expert: the same against an expert plain loop (bf16 autocast, channels_last model and
  batches): >= 1.0x;
- equal-seed / equal-small: the float32 engine against eager PyTorch with the same glibc malloc
  settings on both sides (from the environment): the engine's own gain, not the allocator's.
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import run_timed, table  # noqa: E402

COMMON = """
import json, time, torch, torch.nn as nn, torch.nn.functional as F
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
torch.manual_seed(0)
STEPS, WARM, BS = {steps}, {warm}, {bs}

class ImageClassifier(nn.Module):                  # the seed tutorial's class, as a user writes it
    def __init__(self, num_classes=10):
        super(ImageClassifier, self).__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.conv4 = nn.Conv2d(128, 128, kernel_size=3, padding=1)
        self.bn4 = nn.BatchNorm2d(128)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv5 = nn.Conv2d(128, 256, kernel_size=3, padding=1)
        self.bn5 = nn.BatchNorm2d(256)
        self.conv6 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.bn6 = nn.BatchNorm2d(256)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(256 * 4 * 4, 512)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(512, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.pool1(x)
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.relu(self.bn4(self.conv4(x)))
        x = self.pool2(x)
        x = self.relu(self.bn5(self.conv5(x)))
        x = self.relu(self.bn6(self.conv6(x)))
        x = self.pool3(x)
        x = x.view(x.size(0), -1)
        x = self.relu(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)

class Flat(ImageClassifier):                       # the same network, as an expert writes it for channels_last
    def forward(self, x):
        r = self.relu
        x = self.pool1(r(self.bn2(self.conv2(r(self.bn1(self.conv1(x)))))))
        x = self.pool2(r(self.bn4(self.conv4(r(self.bn3(self.conv3(x)))))))
        x = self.pool3(r(self.bn6(self.conv6(r(self.bn5(self.conv5(x)))))))
        return self.fc2(self.dropout(r(self.fc1(torch.flatten(x, 1)))))

class Small(nn.Module):                            # a small CNN (two conv blocks), where per-step costs show
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c2, self.b2 = nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64 * 8 * 8, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc(x.flatten(1))

class Tiny(nn.Module):                             # small enough that the loop's own cost shows
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

def report(marks):
    dt = marks[-1] - marks[WARM - 1]               # the STEPS steps after the warm-up ones
    print(json.dumps({{"seconds": dt, "images": BS * (len(marks) - WARM), "threads": torch.get_num_threads()}}))
"""
FC = (
    COMMON
    + """
import fastcifar
from fastcifar import transforms as T
t = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
ds = fastcifar.CIFAR10({root!r}, train=True, transform=t)
loader = fastcifar.DataLoader(ds, batch_size=BS, shuffle=True, seed=0)
model = {model}
if {whole}:                                        # the whole fit over STEPS batches, after a warm-up fit
    tr = fastcifar.Trainer(model, optimizer={opt}, device="cpu"{trainer_kw})
    part = lambda n: fastcifar.DataLoader(ds.subset(range(BS * n)), batch_size=BS, shuffle=True, seed=0)
    tr.fit(part(WARM), epochs=1, progress=False)
    timed = part(STEPS)
    t0 = time.perf_counter()
    tr.fit(timed, epochs=1, progress=False)
    report([t0] * WARM + [time.perf_counter()] * STEPS)
else:
    tr = fastcifar.Trainer(model, optimizer={opt}, device="cpu", log_every=1{trainer_kw})
    marks = []
    def mark(info):                                # a time mark after every step, as the plain loops take
        marks.append(time.perf_counter())
        return len(marks) < STEPS + WARM
    tr.fit(loader, epochs=1, progress=False, callbacks=[mark])
    report(marks)
"""
)
SEED = (
    COMMON
    + """
import torchvision, torchvision.transforms as transforms, torchvision.datasets.cifar as c
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
report(marks)
"""
)
# A plain loop over batches already in memory; EXPERT makes it the expert's (bf16 autocast, a
# channels_last model and batches).
PLAIN_LOOP = """
import fastcifar
from fastcifar import transforms as T
t = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
loader = fastcifar.DataLoader(fastcifar.CIFAR10({root!r}, train=True, transform=t), batch_size=BS, shuffle=True, seed=0)
EXPERT = {expert}
fmt = torch.channels_last if EXPERT else torch.contiguous_format
batches = []                                       # in memory before the clock starts: only the loop is timed
for x, y in loader:
    batches.append((x.contiguous(memory_format=fmt), y))
    if len(batches) == STEPS + WARM:
        break
model = {model}.to(memory_format=fmt)
criterion = nn.CrossEntropyLoss()
optimizer = {opt}
model.train()
marks = []
for images, labels in batches:
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=EXPERT):
        out = model(images)
    loss = criterion(out.float(), labels)
    loss.backward()
    optimizer.step()
    running = loss.item()
    marks.append(time.perf_counter())
report(marks)
"""
PLAIN = COMMON + PLAIN_LOOP.replace("{expert}", "False")
EXPERT = COMMON + PLAIN_LOOP.replace("{expert}", "True")

# glibc's malloc settings are process-wide, and the trainer raises them (see the README): for the rows
# that compare the engine with eager PyTorch on equal terms, both sides get the same settings from the
# environment (the trainer then leaves malloc alone).
EQUAL_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}

ADAM = "torch.optim.Adam(model.parameters(), lr=0.001, weight_decay=1e-4)"
RMSPROP = "torch.optim.RMSprop(model.parameters(), lr=0.001)"
# row: (label ours, label baseline, fastcifar model, fastcifar optimizer, baseline script, baseline model and
# optimizer, batch size, steps factor[, Trainer keywords, environment of both sides])
ROWS = {
    "amp": (
        "Trainer(amp=True), the seed's own class",
        "seed tutorial loop, float32 (torchvision, num_workers=2)",
        "ImageClassifier()",
        ADAM,
        SEED,
        ("", ""),
        128,
        1,
        ", amp=True",
        None,
    ),
    "amp-expert": (
        "Trainer(amp=True), the seed's own class",
        "expert plain loop: bf16 autocast + channels_last, batches in memory",
        "ImageClassifier()",
        ADAM,
        EXPERT,
        ("Flat()", ADAM),
        128,
        1,
        ", amp=True",
        None,
    ),
    "equal-seed": (
        "float32 engine, the seed's own class, same malloc settings",
        "plain PyTorch loop over batches in memory, same malloc settings",
        "ImageClassifier()",
        ADAM,
        PLAIN,
        ("ImageClassifier()", ADAM),
        128,
        1,
        "",
        EQUAL_MALLOC,
    ),
    "equal-small": (
        "float32 engine, a small CNN, batch 64, same malloc settings",
        "plain PyTorch loop over batches in memory, same malloc settings",
        "Small()",
        ADAM,
        PLAIN,
        ("Small()", ADAM),
        64,
        5,
        "",
        EQUAL_MALLOC,
    ),
    "builtin": (
        "fastcifar.models.ImageClassifier on the engine",
        "seed tutorial loop (torchvision, num_workers=2)",
        "fastcifar.models.ImageClassifier()",
        ADAM,
        SEED,
        ("", ""),
        128,
        1,
    ),
    "own": (
        "the seed's own class (user module) on the engine",
        "seed tutorial loop (torchvision, num_workers=2)",
        "ImageClassifier()",
        ADAM,
        SEED,
        ("", ""),
        128,
        1,
    ),
    "tiny": (
        "tiny user module, batch 32, on the engine",
        "plain PyTorch loop over batches in memory",
        "Tiny()",
        ADAM,
        PLAIN,
        ("Tiny()", ADAM),
        32,
        20,
    ),
    "tiny-step": (
        "tiny user module, batch 32, torch.optim.RMSprop (its own step())",
        "plain PyTorch loop over batches in memory",
        "Tiny()",
        RMSPROP,
        PLAIN,
        ("Tiny()", RMSPROP),
        32,
        20,
    ),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASTCIFAR_DATA", "data"))
    ap.add_argument("--steps", type=int, default=12, help="timed steps (the tiny row times 20x as many)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator and oneDNN warm-up)")
    ap.add_argument(
        "--repeat", type=int, default=3, help="alternate the two sides this many times; medians are compared"
    )
    ap.add_argument("--rows", default="amp,amp-expert,equal-seed,equal-small,builtin,own,tiny,tiny-step")
    a = ap.parse_args()
    root = os.path.abspath(a.data)

    def ips(r):
        return r["images"] / r["seconds"]

    out, threads = [], None
    for name in a.rows.split(","):
        ours_label, base_label, model, opt, base, (base_model, base_opt), bs, k, *extra = ROWS[name]
        trainer_kw, env = extra if extra else ("", None)
        kw = dict(root=root, steps=a.steps * k, warm=a.warmup * k, bs=bs)
        fcs, bss = [], []
        for _ in range(a.repeat):  # alternating, so that machine noise hits both sides alike
            whole = base is not SEED  # the plain loops time a whole run; the seed loop marks each step
            fcs += run_timed(FC.format(model=model, opt=opt, whole=whole, trainer_kw=trainer_kw, **kw), 1, env)
            bss += run_timed(base.format(model=base_model, opt=base_opt, **kw), 1, env)
        f, s = statistics.median(map(ips, fcs)), statistics.median(map(ips, bss))
        pairs = sorted(ips(x) / ips(y) for x, y in zip(fcs, bss))
        out += [
            [ours_label, f"{f:,.1f}", f"{f / s:.2f}x (runs {pairs[0]:.2f}x to {pairs[-1]:.2f}x)"],
            [base_label, f"{s:,.1f}", "1.00x"],
        ]
        threads = fcs[0]["threads"]
    print(
        f"CPU training, {a.steps} timed steps after {a.warmup} (tiny: 20x both), torch threads: {threads}, "
        f"median of {a.repeat} alternating runs\n"
    )
    print(table(["loop", "images/s", "ratio"], out))


if __name__ == "__main__":
    main()
