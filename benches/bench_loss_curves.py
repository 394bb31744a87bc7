"""Issue 22's "at the same accuracy within noise": Trainer(amp=True) and the expert plain loop (bf16
autocast, a channels_last model and batches) trained side by side over real CIFAR-10, from the same
initial weights and the same batches (one fastcifar loader, same seed), with the seed's network and
optimizer (Adam, lr 1e-3, batch 128, flip + crop augmentation). Prints the training loss of each
over the epoch in windows of steps, and each one's test accuracy after it.

    python benches/bench_loss_curves.py --data DATA_DIR [--epochs 1] [--window 40] [--seeds 3]

The networks are bench_train_cpu.py's (the seed's class; its expert twin with torch.flatten, which
channels_last activations need). torch's generator is seeded alike before each side, so both draw
the same dropout masks (measured: the two sides' losses agree to the fourth decimal); ``--seeds``
repeats both sides from other weights and batches, which measures the seed-to-seed noise a
difference would be read against. A bench, not a test: it prints, it asserts nothing.
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
    ap.add_argument("--seeds", type=int, default=3, help="runs per side, each from its own weights and batches")
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

    def batches(seed):
        return fastcifar.DataLoader(train, batch_size=128, shuffle=True, seed=seed)

    def trainer_side(start, seed):
        # fastcifar: the seed's own class, amp=True (bf16 and channels_last on a CPU with native bf16).
        model = ns["ImageClassifier"]()
        model.load_state_dict(start)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        tr = fastcifar.Trainer(model, opt, device="cpu", amp=True, log_every=1)
        losses: list = []
        tr.fit(
            batches(seed),
            epochs=a.epochs,
            progress=False,
            callbacks=[lambda i: losses.append(i["batch_loss"]) if i["phase"] == "step" else None],
        )
        return losses, tr.evaluate(fastcifar.DataLoader(test, batch_size=500), progress=False).accuracy

    def expert_side(start, seed):
        # The expert plain loop over the same batches.
        cl = torch.channels_last
        expert = ns["Flat"]()
        expert.load_state_dict(start)
        expert = expert.to(memory_format=cl)
        opt = torch.optim.Adam(expert.parameters(), lr=1e-3)
        criterion = nn.CrossEntropyLoss()
        losses: list = []
        expert.train()
        for _ in range(a.epochs):
            for x, y in batches(seed):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = expert(x.contiguous(memory_format=cl))
                loss = criterion(out.float(), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        expert.eval()
        correct = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for x, y in fastcifar.DataLoader(test, batch_size=500):
                correct += int((expert(x.contiguous(memory_format=cl)).argmax(1) == y).sum())
        return losses, correct / len(test)

    # Per seed: the same initial weights and batches for both sides; the seeds differ in both, so
    # the spread across seeds is the noise a difference between the sides is measured against.
    runs: dict = {"ours": [], "theirs": []}
    for seed in range(a.seeds):
        torch.manual_seed(seed)
        start = ns["ImageClassifier"]().state_dict()
        # Alternate which side goes first, so neither always runs on a warmer machine.
        sides = [("ours", trainer_side), ("theirs", expert_side)]
        for name, side in sides if seed % 2 == 0 else sides[::-1]:
            torch.manual_seed(seed)  # the dropout draws start from the same state on both sides
            t = time.perf_counter()
            losses, acc = side(start, seed)
            runs[name].append((losses, acc, time.perf_counter() - t))
            print(f"seed {seed}: {name} {100 * acc:.2f}% in {runs[name][-1][2]:.1f} s", file=sys.stderr)

    def window(name, lo, hi):
        per_seed = [statistics.mean(losses[lo:hi]) for losses, _, _ in runs[name]]
        return statistics.mean(per_seed), per_seed

    n = min(len(r[0]) for side in runs.values() for r in side)
    print(
        f"training loss, mean over windows of {a.window} steps and over {a.seeds} seed(s) "
        f"({a.epochs} epoch(s), batch 128, Adam 1e-3); in brackets the per-seed differences\n"
    )
    print("| steps | Trainer(amp=True) | expert bf16 loop | difference (per seed) |")
    print("| --- | --- | --- | --- |")
    for lo in range(0, n, a.window):
        hi = min(lo + a.window, n)
        (f, fs), (e, es) = window("ours", lo, hi), window("theirs", lo, hi)
        diffs = ", ".join(f"{x - y:+.3f}" for x, y in zip(fs, es))
        print(f"| {lo}-{hi - 1} | {f:.4f} | {e:.4f} | {f - e:+.4f} ({diffs}) |")
    acc = {k: [100 * r[1] for r in v] for k, v in runs.items()}
    diffs = ", ".join(f"{x - y:+.2f}" for x, y in zip(acc["ours"], acc["theirs"]))
    mo, mt = statistics.mean(acc["ours"]), statistics.mean(acc["theirs"])
    print(f"| test accuracy | {mo:.2f}% | {mt:.2f}% | {mo - mt:+.2f} ({diffs}) |")
    to, tt = (statistics.median(r[2] for r in runs[k]) for k in ("ours", "theirs"))
    print(f"| training time, median (log_every=1 here) | {to:.1f} s | {tt:.1f} s | |")


if __name__ == "__main__":
    main()
