"""Property-based test of the loader's public options: random valid and invalid combinations.
Every case is either a correct epoch of batches or an exception that names the bad option."""

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from _internals import native_loader  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastcifar  # noqa: E402
from fastcifar import transforms as T  # noqa: E402

N_MAX = 40
rng = np.random.default_rng(0)
IMAGES = rng.integers(0, 256, (N_MAX, 8, 8, 3), dtype=np.uint8)
LABELS = rng.integers(0, 5, N_MAX)

# Out-of-domain values for each integer option, and a few wrong types.
BAD_VALUES = [0, -1, True, 2.5, "2", None, 2**70, 10**6, 2**64]
TRANSFORMS = {
    "none": lambda: None,
    "to_tensor": lambda: T.ToTensor(),
    "crop": lambda: T.Compose([T.RandomCrop(8, padding=2), T.RandomHorizontalFlip(), T.ToTensor()]),
    "resize": lambda: T.Compose([T.Resize(5), T.ToTensor(), T.Normalize((0.5,) * 3, (0.2,) * 3)]),
    "center_crop_too_big": lambda: T.CenterCrop(16),
    "bytes_only": lambda: T.RandomHorizontalFlip(),
}


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, N_MAX),
    batch_size=st.integers(1, 50),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    seed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    prefetch=st.integers(1, 4),
    num_threads=st.one_of(st.none(), st.integers(1, 3)),
    dtype=st.sampled_from([torch.float32, torch.uint8]),
    world_rank=st.integers(1, 4).flatmap(lambda w: st.tuples(st.just(w), st.integers(0, w - 1))),
    pad_shards=st.booleans(),
    transform=st.sampled_from(sorted(TRANSFORMS)),
    epoch=st.integers(0, 3),
    # About half the cases put one out-of-domain value into one option.
    bad=st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from(["batch_size", "seed", "prefetch", "num_threads", "rank", "world_size", "dtype"]),
            st.sampled_from(BAD_VALUES + [torch.float64, "float32", 5]),
        ),
    ),
)
def test_loader_options_give_a_correct_epoch_or_a_named_error(
    n, batch_size, shuffle, drop_last, seed, prefetch, num_threads, dtype, world_rank, pad_shards, transform, epoch, bad
):
    world_size, rank = world_rank
    ds = fastcifar.Dataset.from_numpy(IMAGES[:n], LABELS[:n], classes=[str(i) for i in range(5)])
    opts = dict(
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        prefetch=prefetch,
        num_threads=num_threads,
        dtype=dtype,
        rank=rank,
        world_size=world_size,
        pad_shards=pad_shards,
        transform=TRANSFORMS[transform](),
    )
    if bad is not None:
        opts[bad[0]] = bad[1]
    batch_size, dtype, drop_last = opts["batch_size"], opts["dtype"], opts["drop_last"]
    try:
        loader = fastcifar.DataLoader(ds, **opts)
        loader.set_epoch(epoch)
        batches = list(loader)
    except (ValueError, TypeError) as e:
        named = [k for k in list(opts) + ["size", "dataset"] if k in str(e)]
        assert named, f"{type(e).__name__} names no option: {e} (options {opts})"
        event(f"refused: {named[0]}")
        return
    event("epoch")
    # A correct epoch: this shard's indices in order, cut into batches.
    order = native_loader(loader).indices(epoch)
    if batch_size is None:  # torch's "no automatic batching": one sample at a time, no batch dimension
        assert len(batches) == len(order) == len(loader)
        assert [int(y) for _, y in batches] == [int(LABELS[i]) for i in order]
        assert all(tuple(x.shape) == tuple(loader.image_shape) for x, _ in batches)
        return
    b = batch_size
    expect = [order[i : i + b] for i in range(0, len(order), b) if not drop_last or len(order[i : i + b]) == b]
    assert len(batches) == len(expect) == len(loader)
    want_dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    for (x, y), idx in zip(batches, expect):
        assert y.tolist() == [int(LABELS[i]) for i in idx]
        assert x.shape[0] == len(idx) and x.shape[1:] == loader.image_shape
        assert x.dtype == want_dtype
        if transform in ("to_tensor", "crop") and want_dtype == torch.float32:
            assert 0 <= x.min() and x.max() <= 1
        assert torch.isfinite(x.float()).all()
    if transform == "none" and want_dtype == torch.uint8 and batches:
        x, _ = batches[0]
        assert torch.equal(x, torch.from_numpy(IMAGES[expect[0]]).permute(0, 3, 1, 2))
