"""Issue 22's "at the same accuracy within noise": Trainer(amp=True) and the expert plain loop (bf16
autocast, a channels_last model and batches) trained side by side over real CIFAR-10, from the same
initial weights and the same batches (one fastcifar loader, same seed), with the seed's network and
optimizer (Adam, lr 1e-3, batch 128, flip + crop augmentation). Prints the training loss of each
over the epoch in windows of steps, and each one's test accuracy after it.

    python benches/bench_loss_curves.py --data DATA_DIR [--epochs 1] [--window 40]

The networks are bench_train_cpu.py's (the seed's class; its expert twin with torch.flatten, which
channels_last activations need). Dropout draws differ between the two sides, so the curves agree
within that noise, not bit for bit. A bench, not a test: it prints, it asserts nothing.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_cpu import COMMON  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--window", type=int, default=40, help="steps per row of the table")
    a = ap.parse_args()
    ns: dict = {}
    exec(COMMON.format(steps=0, warm=0, bs=128), ns)  # the seed's class and its expert twin
    torch, nn, mean, std = ns["torch"], ns["nn"], ns["MEAN"], ns["STD"]
    import fastcifar
    from fastcifar import transforms as T

    torch.set_num_threads(2)
    aug = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(mean, std)])
    train = fastcifar.CIFAR10(a.data, train=True, transform=aug)
    test = fastcifar.CIFAR10(a.data, train=False, transform=T.Compose([T.ToTensor(), T.Normalize(mean, std)]))

    def batches():
        return fastcifar.DataLoader(train, batch_size=128, shuffle=True, seed=0)

    torch.manual_seed(0)
    start = ns["ImageClassifier"]().state_dict()

    # fastcifar: the seed's own class, amp=True (bf16 and channels_last on a CPU with native bf16).
    model = ns["ImageClassifier"]()
    model.load_state_dict(start)
    tr = fastcifar.Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-3), device="cpu", amp=True, log_every=1)
    ours: list = []
    t = time.perf_counter()
    tr.fit(
        batches(),
        epochs=a.epochs,
        progress=False,
        callbacks=[lambda i: ours.append(i["batch_loss"]) if i["phase"] == "step" else None],
    )
    ours_s = time.perf_counter() - t
    ours_acc = tr.evaluate(fastcifar.DataLoader(test, batch_size=500), progress=False).accuracy

    # The expert plain loop over the same batches.
    cl = torch.channels_last
    expert = ns["Flat"]()
    expert.load_state_dict(start)
    expert = expert.to(memory_format=cl)
    opt = torch.optim.Adam(expert.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    theirs: list = []
    t = time.perf_counter()
    expert.train()
    for _ in range(a.epochs):
        for x, y in batches():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = expert(x.contiguous(memory_format=cl))
            loss = criterion(out.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            theirs.append(loss.item())
    theirs_s = time.perf_counter() - t
    expert.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y in fastcifar.DataLoader(test, batch_size=500):
            correct += int((expert(x.contiguous(memory_format=cl)).argmax(1) == y).sum())
    theirs_acc = correct / len(test)

    print(f"training loss, mean over windows of {a.window} steps ({a.epochs} epoch(s), batch 128, Adam 1e-3)\n")
    print("| steps | Trainer(amp=True) | expert bf16 loop | difference |")
    print("| --- | --- | --- | --- |")
    for lo in range(0, min(len(ours), len(theirs)), a.window):
        hi = min(lo + a.window, len(ours), len(theirs))
        f, e = statistics.mean(ours[lo:hi]), statistics.mean(theirs[lo:hi])
        print(f"| {lo}-{hi - 1} | {f:.4f} | {e:.4f} | {f - e:+.4f} |")
    print(f"| test accuracy | {100 * ours_acc:.2f}% | {100 * theirs_acc:.2f}% | {100 * (ours_acc - theirs_acc):+.2f} |")
    print(f"| training time (log_every=1 here) | {ours_s:.1f} s | {theirs_s:.1f} s | |")


if __name__ == "__main__":
    main()
