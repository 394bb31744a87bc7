"""Data-parallel training on PyTorch's own distributed engine (torch.distributed).

Launch the same script with torchrun and ``Trainer`` notices::

    torchrun --nproc_per_node=8 train.py            # or: torchrun --nproc_per_node=8 -m fastcifar train ...

Each process joins the default process group (NCCL on CUDA with one GPU per local rank, gloo on
CPU), rank 0's initial weights are broadcast, and every optimizer step averages the gradients
across ranks, one all-reduce per bucket of about ``bucket_cap_mb``. The Rust training loop calls
back into this module for each collective, so fastcifar has no communication layer of its own.

A rank that fails or stops makes the others fail too: torchrun stops the job, and a peer that is
gone or silent makes the next collective raise ("Connection closed by peer" at once, or after the
process group's timeout: ``timeout=`` here or ``$FASTCIFAR_DIST_TIMEOUT`` seconds, default 600).
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

__all__ = ["ProcessGroup", "init", "launched", "local_rank"]


def launched() -> bool:
    """True in a process that torchrun (or another launcher) started as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    """A process group with more than one rank is set up (by us, torchrun users or Lightning)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _timeout(timeout: float | None) -> datetime.timedelta:
    if timeout is None:
        timeout = float(os.environ.get("FASTCIFAR_DIST_TIMEOUT", "600"))
    if not timeout > 0:
        raise ValueError(f"timeout: must be a positive number of seconds, got {timeout!r}")
    return datetime.timedelta(seconds=timeout)


class ProcessGroup:
    """The collectives the Rust training loop needs, on a torch.distributed process group."""

    def __init__(self, group=None, device="cpu"):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        # Small flag and count tensors live here (NCCL only reduces CUDA tensors).
        self.device = torch.device(device)

    def all_reduce(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sums each tensor in place across ranks; all buckets are in flight together."""
        works = [dist.all_reduce(t, group=self.group, async_op=True) for t in tensors]
        for w in works:
            w.wait()

    def any(self, flags: Sequence[bool]) -> list[bool]:
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return [bool(v) for v in t.tolist()]

    def broadcast(self, tensors: Iterable[torch.Tensor], src: int = 0) -> None:
        """Copies rank ``src``'s values into ``tensors`` on every rank, one flat message per dtype."""
        groups: dict = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        with torch.no_grad():
            for ts in groups.values():
                flat = torch.cat([t.detach().reshape(-1) for t in ts])
                dist.broadcast(flat, src=src, group=self.group)
                off = 0
                for t in ts:
                    n = t.numel()
                    t.detach().copy_(flat[off : off + n].view_as(t))
                    off += n

    def broadcast_object(self, obj, src: int = 0):
        box = [obj]
        dist.broadcast_object_list(
            box, src=src, group=self.group, device=self.device if self.device.type == "cuda" else None
        )
        return box[0]

    def sum(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.group)
        return t.tolist()

    def __repr__(self) -> str:
        return f"ProcessGroup(rank={self.rank}, world_size={self.world_size}, backend={dist.get_backend(self.group)})"


def init(device: str = "auto", timeout: float | None = None, backend: str | None = None):
    """Joins torch.distributed's default process group, setting it up from torchrun's environment
    if nobody has yet. Returns (ProcessGroup, device): the device is ``cuda:LOCAL_RANK`` when CUDA
    is asked for (or ``auto`` and present), else ``cpu``."""
    d = str(device)
    use_cuda = torch.cuda.is_available() if d == "auto" else d.startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device: '{d}' was asked for, but CUDA is not available here")
        idx = int(d.split(":")[1]) if ":" in d else local_rank()
        torch.cuda.set_device(idx)
        d = f"cuda:{idx}"
    else:
        d = "cpu"
    if not dist.is_available():
        raise RuntimeError("distributed: this torch build has no torch.distributed")
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"distributed: no process group is set up and {', '.join(missing)} is not set; "
                "launch with torchrun (torchrun --nproc_per_node=N script.py) "
                "or call torch.distributed.init_process_group"
            )
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"), timeout=_timeout(timeout))
        atexit.register(_shutdown)
    if d == "cpu" and dist.get_backend() == "nccl":
        raise RuntimeError(
            "distributed: the process group uses NCCL, which reduces CUDA tensors only; train on device='cuda' "
            "(or set up a gloo group for CPU training)"
        )
    return ProcessGroup(device=d), d


def _shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()


class _SyncBatchNorm(torch.autograd.Function):
    """BatchNorm over the whole global batch: forward all-reduces per-channel counts, sums and sums
    of squares (in float64, from each rank's exact mean and variance); backward all-reduces the
    sums that the input gradient needs. Weight and bias gradients stay local; the trainer averages
    them with the rest."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, pg):
        c = x.shape[1]
        xf = x.float()
        n = xf.numel() // c
        var, mean = torch.var_mean(xf, dim=(0, 2, 3), correction=0)
        m64 = mean.double()
        stats = torch.cat(
            [m64 * n, (var.double() + m64 * m64) * n, torch.full((1,), float(n), dtype=torch.float64, device=x.device)]
        )
        pg.all_reduce([stats])
        total = stats[-1]
        gmean = stats[:c] / total
        gvar = (stats[c : 2 * c] / total - gmean * gmean).clamp_min(0)
        running_mean.mul_(1 - momentum).add_(gmean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_(
            (gvar * total / (total - 1).clamp_min(1)).to(running_var.dtype), alpha=momentum
        )
        mean32, invstd = gmean.float(), (gvar + eps).rsqrt().float()
        y = (xf - mean32[None, :, None, None]) * (invstd * weight)[None, :, None, None] + bias[None, :, None, None]
        ctx.save_for_backward(xf, weight, mean32, invstd)
        ctx.total, ctx.pg, ctx.in_dtype = float(total), pg, x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        xf, weight, mean, invstd = ctx.saved_tensors
        c = xf.shape[1]
        dy = dy.float()
        xmu = xf - mean[None, :, None, None]
        sum_dy = dy.sum((0, 2, 3))
        sum_dy_xmu = (dy * xmu).sum((0, 2, 3))
        g = torch.cat([sum_dy, sum_dy_xmu])
        ctx.pg.all_reduce([g])
        mean_dy, mean_dy_xmu = g[:c] / ctx.total, g[c:] / ctx.total
        k = (invstd * invstd * mean_dy_xmu)[None, :, None, None]
        dx = (dy - mean_dy[None, :, None, None] - xmu * k) * (invstd * weight)[None, :, None, None]
        return dx.to(ctx.in_dtype), sum_dy_xmu * invstd, sum_dy, None, None, None, None, None


def sync_batch_norm(pg: ProcessGroup):
    """The function the Rust BatchNorm layers call in training mode when ``sync_bn=True``."""

    def bn(x, weight, bias, running_mean, running_var, momentum, eps):
        return _SyncBatchNorm.apply(x, weight, bias, running_mean, running_var, momentum, eps, pg)

    return bn
