"""Data-parallel scaling: training images/s at world sizes 1, 2, ... (torchrun, gloo on CPU, NCCL on
CUDA), and the overhead of the data-parallel path at world size 1 against distributed=False.

    python benches/bench_distributed.py --data DATA_DIR                          # CPU: 1 vs 2 gloo processes
    python benches/bench_distributed.py --data DATA_DIR --device cuda --world-sizes 1,2,4,8

Every run trains the same model on real CIFAR-10 (--images of it) for one untimed warm-up epoch and
one timed epoch; images/s counts all ranks' images over rank 0's epoch time. The batch is per rank
(--batch-size), as with DistributedDataParallel. On CPU each of k processes gets cores/k torch
threads, so the 2-process row measures how well splitting the cores between processes works.
The world-size-1 rows alternate --repeat times; the overhead is the ratio of their medians
(target, issue 7: at most 3% slower).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import table  # noqa: E402

WORKER = r"""
import json, os, sys, time, torch
import fastcifar
from fastcifar import transforms as T
root, device, model_name, images, bs, distributed, out = sys.argv[1:8]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
torch.manual_seed(0)
tf = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
ds = fastcifar.CIFAR10(root, train=True, transform=tf).subset(range(int(images)))
model = {"small_cnn": lambda: fastcifar.models.small_cnn(10), "resnet9": lambda: fastcifar.models.resnet9(10),
         "image_classifier": lambda: fastcifar.models.ImageClassifier(10)}[model_name]()
tr = fastcifar.Trainer(model, fastcifar.optim.SGD(lr=0.05, momentum=0.9, nesterov=True), device=device,
                       distributed=distributed == "1", seed=0)
dev = tr.device
loader = fastcifar.DataLoader(ds, batch_size=int(bs), shuffle=True, drop_last=True, seed=0,
                              device=dev, pin_memory=dev.startswith("cuda"))
tr.fit(loader, epochs=1, progress=False)          # warm-up (cuDNN autotune, allocator, threads)
h = tr.fit(loader, epochs=1, progress=False)
if tr.is_main:
    e = h.epochs[-1]
    json.dump({"images_per_s": e["images_per_s"], "world_size": tr.world_size,
               "threads": torch.get_num_threads()}, open(out, "w"))
"""


def launch(args, world: int, distributed: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script, out = os.path.join(tmp, "worker.py"), os.path.join(tmp, "out.json")
        open(script, "w").write(WORKER)
        argv = [
            os.path.abspath(args.data),
            args.device,
            args.model,
            str(args.images),
            str(args.batch_size),
            "1" if distributed else "0",
            out,
        ]
        env = dict(os.environ)
        if args.device == "cpu":
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world))
        if distributed:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={world}",
                script,
            ] + argv
        else:
            cmd = [sys.executable, script] + argv
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"run failed (world {world}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        return json.load(open(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASTCIFAR_DATA", "data"))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--model", default=None, help="small_cnn (CPU default) or resnet9 (CUDA default)")
    ap.add_argument("--images", type=int, default=None, help="training images per epoch (CPU default 4096, CUDA 50000)")
    ap.add_argument("--batch-size", type=int, default=None, help="per rank (CPU default 64, CUDA 512)")
    ap.add_argument("--world-sizes", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    cuda = a.device == "cuda"
    a.model = a.model or ("resnet9" if cuda else "small_cnn")
    a.images = a.images or (50000 if cuda else 4096)
    a.batch_size = a.batch_size or (512 if cuda else 64)
    worlds = [int(w) for w in a.world_sizes.split(",")]
    plain, ws1 = [], []
    for _ in range(a.repeat):  # alternating: machine noise hits both alike
        plain.append(launch(a, 1, False)["images_per_s"])
        ws1.append(launch(a, 1, True)["images_per_s"])
    rows = [
        ["1 process, distributed=False", f"{statistics.median(plain):,.0f}", "1.00x", ""],
        [
            "world size 1 (torchrun, data-parallel path)",
            f"{statistics.median(ws1):,.0f}",
            f"{statistics.median(ws1) / statistics.median(plain):.3f}x",
            "overhead target: >= 0.97x",
        ],
    ]
    base = statistics.median(plain)
    for w in worlds:
        if w == 1:
            continue
        r = [launch(a, w, True)["images_per_s"] for _ in range(a.repeat)]
        rows.append(
            [
                f"world size {w}",
                f"{statistics.median(r):,.0f}",
                f"{statistics.median(r) / base:.2f}x",
                f"{(os.cpu_count() or 1) // w} threads each" if not cuda else f"{w} GPUs",
            ]
        )
    print(
        f"{a.model}, {a.images} images, batch {a.batch_size} per rank, {a.device}, medians of {a.repeat} runs "
        f"({os.cpu_count()} cores)\n"
    )
    print(table(["run", "images/s", "vs distributed=False", "note"], rows))


if __name__ == "__main__":
    main()
