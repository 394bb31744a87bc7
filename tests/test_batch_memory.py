"""Batch memory is reused (no page faults per batch) without ever overwriting what a user keeps:
a batch's memory returns to the loader only when torch frees its storage, views included, and the
tensors behave as torch's own (in-place ops, resize_, share_memory_, torch.save)."""

import io

import numpy as np
import torch

import fastcifar
from fastcifar import transforms as T


def make_loader(n=96, batch_size=8, **kw):
    rng = np.random.default_rng(0)
    t = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor()])
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    ds = fastcifar.Dataset.from_numpy(x, rng.integers(0, 10, n), classes=[str(i) for i in range(10)], transform=t)
    return fastcifar.DataLoader(ds, batch_size=batch_size, shuffle=True, seed=1, **kw)


def test_memory_is_reused_when_batches_are_dropped():
    loader = make_loader()
    ptrs = [x.data_ptr() for x, _ in loader]  # each batch is dropped before the next is taken
    assert len(ptrs) == 12
    # The channel, the batch being built and the one held: a handful of blocks, not one per batch.
    assert len(set(ptrs)) <= 6, ptrs


def test_kept_batches_and_views_are_never_overwritten():
    loader = make_loader()
    kept, copies, views = [], [], []
    for i, (x, _) in enumerate(loader):
        if i % 2:
            kept.append(x)  # whole batches
        else:
            views.append(x[1:3])  # only a view; the batch tensor itself is dropped
        copies.append(x.clone())
    assert len({x.data_ptr() for x in kept}) == len(kept)
    for i, c in enumerate(copies):
        got = kept[i // 2] if i % 2 else views[i // 2]
        assert torch.equal(got, c if i % 2 else c[1:3]), i
    # The same epoch built again gives the same values (the memory held nothing stale).
    again = [x for x, _ in make_loader()]
    assert all(torch.equal(a, b) for a, b in zip(again, copies))


def test_batches_behave_as_torch_tensors():
    it = iter(make_loader())
    x, _ = next(it)
    before = x.clone()
    x.resize_(16, 3, 32, 32)  # grows: torch moves the data into its own memory, as for any tensor
    assert torch.equal(x[:8], before)
    x2, _ = next(it)
    c2 = x2.clone()
    x2.share_memory_()
    assert x2.is_shared() and torch.equal(x2, c2)
    x3, _ = next(it)
    x3.mul_(2).add_(1)
    buf = io.BytesIO()
    torch.save(x3, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), x3)
    assert x3.is_contiguous() and x3.data_ptr() % 64 == 0
