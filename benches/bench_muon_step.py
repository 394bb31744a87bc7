"""The optimizer step of the airbench94_muon recipe, three ways, against the step of SGD alone and
a forward + backward pass of the same network (the measurement behind the recipe's choice of
running Muon through its optimizer's own ``step()`` rather than in the Rust loop; issue 21.3).

  1. ``recipes.MuonSGD.step()``: what the recipe runs (Muon on the 3x3 filters, torch's SGD update
     on the biases and the head), called by the Trainer after each backward pass;
  2. ``torch.optim.Muon.step()`` on 2-D copies of the filters (it takes matrices only and has no
     weight renormalisation), with ``torch.optim.SGD`` on the rest: torch's own Muon;
  3. the same tensor operations as (1) in a bare loop, with no optimizer object around them: what
     a Muon written in the Rust loop would run (the same ATen kernels, minus Python's dispatch), so
     (1) minus (3) bounds what moving Muon into Rust could save;
  4. ``torch.optim.SGD.step()`` on every trainable parameter (airbench94's optimizer);
  5. one forward and backward pass at ``--batch`` images (bf16 autocast on a CPU), for scale.

    python benches/bench_muon_step.py [--device cpu] [--repeat 20] [--batch 256]

Times are medians of ``--repeat`` calls after warm-up calls, synchronised on CUDA. A bench, not a test.
"""

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from fastcifar import recipes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import table  # noqa: E402


def timed(fn, repeat: int, device: str) -> float:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(3):
        fn()
    sync()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256, help="images in the forward + backward row")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = a.device
    model = recipes.Airbench94Muon().to(dev)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    filters = [p for _, p in named if p.dim() == 4]
    rest = [p for _, p in named if p.dim() != 4]
    for _, p in named:
        p.grad = torch.randn_like(p) * 1e-2
    m = recipes.AIRBENCH94_MUON
    ns = m["ns_steps"]

    ours = recipes.MuonSGD(
        [
            {"params": rest, "lr": 0.05, "weight_decay": 1e-4},
            {"params": filters, "muon": True, "lr": 0.01, "momentum": m["filter_momentum"], "ns_steps": ns},
        ],
        momentum=m["momentum"],
        nesterov=True,
    )

    # torch's Muon: matrices only, so 2-D copies of the filters (with their gradients).
    mats = [p.detach().reshape(len(p), -1).clone().requires_grad_() for p in filters]
    for q, p in zip(mats, filters):
        q.grad = p.grad.reshape(q.shape).clone()
    torch_muon = torch.optim.Muon(
        mats, lr=0.01, weight_decay=0.0, momentum=m["filter_momentum"], nesterov=True, ns_steps=ns
    )
    torch_sgd_rest = torch.optim.SGD(rest, lr=0.05, momentum=m["momentum"], nesterov=True, weight_decay=1e-4)

    def torch_pair():
        torch_muon.step()
        torch_sgd_rest.step()

    # The bare operations of MuonSGD's Muon groups, as a Rust loop would issue them.
    bufs = [torch.zeros_like(p) for p in filters]
    dtype = torch.bfloat16

    @torch.no_grad()
    def bare():
        mo = m["filter_momentum"]
        for p, b in zip(filters, bufs):
            b.mul_(mo).add_(p.grad)
            u = p.grad.add(b, alpha=mo)
            p.mul_(math.sqrt(p.shape[0]) / p.norm())
            p.add_(recipes.newton_schulz(u.reshape(len(u), -1), ns, dtype=dtype).view(p.shape), alpha=-0.01)
        torch_sgd_rest.step()

    sgd_all = torch.optim.SGD([p for _, p in named], lr=0.05, momentum=0.85, nesterov=True, weight_decay=1e-4)

    x = torch.randn(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    amp_dtype = torch.bfloat16

    def fwd_bwd():
        with torch.autocast(dev.split(":")[0], dtype=amp_dtype):
            out = model(x)
        F.cross_entropy(out.float(), y, label_smoothing=0.2).backward()

    rows_t = [
        ("recipes.MuonSGD.step() (the recipe's)", timed(ours.step, a.repeat, dev)),
        ("torch.optim.Muon.step() + torch.optim.SGD.step() (2-D copies)", timed(torch_pair, a.repeat, dev)),
        ("bare tensor ops of the Muon update (what a Rust-loop Muon runs)", timed(bare, a.repeat, dev)),
        ("torch.optim.SGD.step() on all parameters (airbench94's)", timed(sgd_all.step, a.repeat, dev)),
        (f"forward + backward, batch {a.batch}, bf16 autocast", timed(fwd_bwd, max(3, a.repeat // 4), dev)),
    ]
    base = rows_t[3][1]
    print(f"device {dev}, torch threads {torch.get_num_threads()}, {len(filters)} filter tensors, Muon ns_steps {ns}\n")
    print(table(["step", "ms (median)", "vs SGD step"], [[n, f"{1e3 * t:.2f}", f"{t / base:.2f}x"] for n, t in rows_t]))


if __name__ == "__main__":
    main()
