"""The DataLoader: batches built in Rust on a background thread, yielded as torch tensors."""
from __future__ import annotations

import warnings
from typing import Iterator, Optional, Tuple

import torch

from . import _native as _rs
from .datasets import Dataset
from .transforms import ops_of

__all__ = ["DataLoader"]

_DTYPES = {torch.float32: "float32", torch.uint8: "uint8"}


class DataLoader:
    """Iterates ``(images, labels)`` batches: float32 (B, C, H, W) (or uint8 with ``dtype=torch.uint8``)
    and int64 (B,).

    A drop-in for ``torch.utils.data.DataLoader`` over fastcifar data sets. The transform (given
    here, or else the data set's own ``transform``) runs fused in Rust on ``num_threads`` cores
    (default: all), while a background thread keeps ``prefetch`` batches ready; waiting for a batch
    releases the GIL. ``num_workers`` is accepted for compatibility and ignored.

    Randomness is a pure function of ``(seed, epoch, sample index)``: the same seed gives the same
    batches whatever the thread count. ``seed=None`` draws one from torch's generator, so
    ``torch.manual_seed`` makes runs repeatable. Each ``iter()`` uses the current epoch and then
    advances it; ``set_epoch(n)`` sets it (as with ``DistributedSampler``).

    ``rank`` / ``world_size`` shard the data set as ``DistributedSampler`` does: one permutation for
    all ranks (so ``seed`` must be the same on every rank), rank r takes every world_size-th index
    from r. Shards are padded to equal length by wrapping around to the first indices (or the tail
    is dropped with ``drop_last``), so every rank runs the same number of steps.

    ``pad_shards=False`` (for evaluation) pads nothing: shards then differ by at most one sample,
    and every sample is seen exactly once across ranks. ``Trainer`` shards its loaders itself when
    it trains data-parallel (``loader.shard(rank, world_size)``).

    ``resident=True`` copies the whole uint8 data set to ``device`` once and builds every batch
    there: the host draws each sample's crop and flip from the same (seed, epoch, index) stream as
    the Rust pass and sends only those index maps; the device gathers, fills and normalises. The
    batches equal the Rust pass's (ToTensor + Normalize rounded alike), and nothing else crosses
    PCIe per step. It covers crops, pads (any mode), flips, ToTensor and Normalize; other
    transforms warn and run on the host.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        transform=None,
        seed: Optional[int] = None,
        device="cpu",
        pin_memory: bool = False,
        prefetch: int = 2,
        dtype: torch.dtype = torch.float32,
        num_workers: Optional[int] = None,
        num_threads: Optional[int] = None,
        rank: int = 0,
        world_size: int = 1,
        pad_shards: bool = True,
        resident: bool = False,
    ) -> None:
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset: expected a fastcifar data set (CIFAR10, ImageFolder, Dataset.from_numpy), got {type(dataset).__name__}")
        for name, v in (("batch_size", batch_size), ("prefetch", prefetch), ("world_size", world_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive int, got {v!r}")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"num_threads: must be a positive int or None, got {num_threads!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank!r} is not in [0, world_size={world_size})")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: {dtype} is not torch.float32 or torch.uint8")
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        elif not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: must be a non-negative int or None, got {seed!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform if transform is not None else dataset.transform
        self.seed = seed
        self.dtype = dtype
        self.device = torch.device(device) if str(device) != "auto" else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.num_workers = num_workers
        self.rank, self.world_size, self.pad_shards = rank, world_size, bool(pad_shards)
        self.epoch = 0
        self._options = dict(pin_memory=pin_memory, prefetch=prefetch, num_threads=num_threads)
        self._native = _rs.NativeLoader(
            dataset._native, ops_of(self.transform, _DTYPES[dtype]), batch_size, bool(shuffle), bool(drop_last), seed,
            prefetch, _DTYPES[dtype], str(self.device), bool(pin_memory), num_threads, rank, world_size, bool(pad_shards),
        )
        self.resident = False
        if resident:
            try:
                self._native = self._native.resident()
                self.resident = True
            except ValueError as e:  # a transform the device path lacks: still works, on the host
                warnings.warn(f"DataLoader(resident=True): {e}; building batches on the host instead", stacklevel=2)

    def shard(self, rank: int, world_size: int, pad_shards: Optional[bool] = None, seed: Optional[int] = None) -> "DataLoader":
        """The same loader restricted to shard ``rank`` of ``world_size`` (see the class notes)."""
        return DataLoader(
            self.dataset, self.batch_size, self.shuffle, self.drop_last, self.transform, self.seed if seed is None else seed,
            self.device, dtype=self.dtype, num_workers=self.num_workers, rank=rank, world_size=world_size,
            pad_shards=self.pad_shards if pad_shards is None else pad_shards, resident=self.resident, **self._options,
        )

    def __len__(self) -> int:
        return len(self._native)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of the images the loader yields."""
        return self._native.out_shape

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch the next iteration uses (its shuffle and augmentations)."""
        if epoch < 0:
            raise ValueError(f"epoch: must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        it = self._native.epoch(self.epoch)
        self.epoch += 1
        return it

    def __repr__(self) -> str:
        return (f"DataLoader(batches={len(self)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, device={self.device}, dtype={self.dtype})")
