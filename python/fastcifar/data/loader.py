"""The DataLoader: batches built in Rust on a background thread, yielded as torch tensors."""

from __future__ import annotations

import dataclasses
import inspect
import operator
import os
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator, Sized
from typing import Any, Callable, cast

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Subset
from torch.utils.data._utils.collate import default_collate

from .. import _native as _rs
from .. import transforms as T
from .._args import whole
from .._warn import warn_once
from ..transforms.base import _is_pil as is_pil
from ..transforms.plan import warn_python
from .datasets import Dataset, positions

__all__ = ["DataLoader", "fast_path"]


def _resolve(dataset) -> Dataset | None:
    """A fastcifar data set for ``dataset``: itself, or the images of a ``Subset`` /
    ``ConcatDataset`` over fastcifar data sets (copied once, keeping their transforms); None for
    anything else."""
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, Subset):
        base = _resolve(dataset.dataset)
        if base is None:
            return None
        return base.subset(positions(dataset.indices, len(base), "Subset"))
    if isinstance(dataset, ConcatDataset):
        resolved = [_resolve(d) for d in dataset.datasets]
        parts = [p for p in resolved if p is not None]
        if not resolved or len(parts) != len(resolved):
            return None
        first = parts[0]
        if any(
            p.transform is not first.transform
            or p.target_transform is not first.target_transform
            or p.shape != first.shape
            for p in parts
        ):
            return None  # per-part transforms: torch's own loop keeps them apart
        targets = [t for p in parts for t in p.targets]
        same = all(p.classes == first.classes for p in parts)
        classes = first.classes if same else [str(i) for i in range(max(targets) + 1)]
        data = np.concatenate([p._hwc() for p in parts])
        return Dataset.from_numpy(data, targets, classes, first.transform, first.target_transform)
    return None


def _is_int_label(v) -> bool:
    return (
        isinstance(v, (int, np.integer))
        and not isinstance(v, bool)
        or (isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool)
    )


def _in_background(make: Callable[[threading.Event], Iterator], depth: int) -> Iterator:
    """Runs the generator ``make(stop)`` on a background thread, ``depth`` items ahead; errors
    re-raise here. Dropping the iterator (a break, Ctrl-C) sets ``stop`` and waits for the thread,
    which the generator must check often (per image: torch's workers stop at once, and waiting for
    a whole batch of Python steps took 14 s)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    gen = make(stop)

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in gen:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as e:  # noqa: B902 - handed to the consumer
            put(("error", e))
        finally:
            gen.close()

    t = threading.Thread(target=work, name="fastcifar-python-steps", daemon=True)
    t.start()

    def consume():
        try:
            while True:
                kind, v = q.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise v
                yield v
        finally:
            stop.set()
            t.join()

    return consume()


@dataclasses.dataclass(frozen=True)
class _Arguments:
    """A DataLoader's arguments (all but the data set), as given; after the checks, the counts as
    ints. The record a fallback to torch's loader passes on, and ``shard`` builds shards from."""

    batch_size: int | None
    shuffle: bool | None
    sampler: Iterable | None
    batch_sampler: Iterable | None
    num_workers: int | None
    collate_fn: Callable | None
    pin_memory: bool
    drop_last: bool
    timeout: float
    worker_init_fn: Callable[[int], Any] | None
    multiprocessing_context: Any
    generator: torch.Generator | None
    prefetch_factor: int | None
    persistent_workers: bool
    pin_memory_device: str
    in_order: bool
    transform: Any
    seed: int | None
    device: Any
    prefetch: int
    dtype: torch.dtype
    num_threads: int | None
    rank: int
    world_size: int
    pad_shards: bool
    resident: bool


# The arguments a shard is built with as they were given (shard() passes the rest itself).
_SHARD_KEEPS = (
    "pin_memory",
    "prefetch",
    "num_threads",
    "num_workers",
    "prefetch_factor",
    "persistent_workers",
    "timeout",
    "worker_init_fn",
    "collate_fn",
    "generator",
)


def _check_torch_arguments(a: _Arguments) -> None:
    """torch's own checks, with torch's messages."""
    if a.sampler is not None and a.shuffle:
        raise ValueError("sampler option is mutually exclusive with shuffle")
    if a.batch_sampler is not None and (a.batch_size != 1 or a.shuffle or a.sampler is not None or a.drop_last):
        raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, and drop_last")
    n = a.num_workers
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"num_workers option should be non-negative, got {n!r}")
    if not isinstance(a.timeout, (int, float)) or a.timeout < 0:
        raise ValueError(f"timeout option should be non-negative, got {a.timeout!r}")
    if n == 0 and a.prefetch_factor is not None:
        raise ValueError(
            "prefetch_factor option could only be specified in multiprocessing. "
            "let num_workers > 0 to enable multiprocessing, otherwise set prefetch_factor to None."
        )
    if n == 0 and a.persistent_workers:
        raise ValueError("persistent_workers option needs num_workers > 0")
    if a.worker_init_fn is not None and not callable(a.worker_init_fn):
        raise TypeError(f"worker_init_fn: {a.worker_init_fn!r} is not callable")
    if a.collate_fn is not None and not callable(a.collate_fn):
        raise TypeError(f"collate_fn: {a.collate_fn!r} is not callable")


def _check_fastcifar_arguments(a: _Arguments) -> _Arguments:
    """The counts as ints (their ranges, and dtype and device, are checked by the core when the
    native loader is made, with its messages), prefetch_factor, the shards, the seed."""
    a = dataclasses.replace(
        a,
        prefetch=whole("prefetch", a.prefetch, None),
        world_size=whole("world_size", a.world_size, None),
        rank=whole("rank", a.rank, None),
        batch_size=whole("batch_size", a.batch_size, None) if a.batch_size is not None else None,
        num_threads=whole("num_threads", a.num_threads, None) if a.num_threads is not None else None,
    )
    pf = a.prefetch_factor
    if pf is not None and (isinstance(pf, bool) or not isinstance(pf, int) or not 1 <= pf < 2**63):
        raise ValueError(f"prefetch_factor: must be a positive int or None, got {pf!r}")
    if a.world_size > 1 and (a.sampler is not None or a.batch_sampler is not None):
        raise ValueError(
            "rank / world_size: give either a sampler (e.g. DistributedSampler) or rank and world_size, not both"
        )
    s = a.seed
    if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**64):
        raise ValueError(f"seed: must be an int in [0, 2**64) or None, got {s!r}")
    return a


def _draw_seed(seed: int | None, generator: torch.Generator | None) -> int:
    """The seed given, or one drawn from ``generator`` (torch's default one when None)."""
    if seed is None:
        return int(torch.randint(0, 2**62, (), generator=generator).item())
    return seed


class DataLoader:
    """Iterates ``(images, labels)`` batches: float32 (B, C, H, W) (or uint8 with ``dtype=torch.uint8``)
    and int64 (B,).

    A drop-in for ``torch.utils.data.DataLoader``: it takes the same arguments in the same order.
    Over a fastcifar data set (or a ``Subset`` / ``ConcatDataset`` of them) the transform (given
    here, or else the data set's own ``transform``: fastcifar's or torchvision's) runs fused in Rust
    on a pool of threads while a background thread keeps batches ready; waiting for a batch releases
    the GIL. Any other data set is iterated by ``torch.utils.data.DataLoader`` itself, with a
    one-time warning. What torch's arguments do here:

    - ``sampler`` (any iterable of indices, e.g. a list, ``SubsetRandomSampler``,
      ``WeightedRandomSampler``, ``DistributedSampler``) and ``batch_sampler`` choose the indices
      (read again every epoch); the images are still built in Rust. ``drop_last`` as torch.
    - ``collate_fn`` gets the list of ``(image, label)`` samples of each fused batch, as torch's
      would (torch's ``default_collate`` is the identity here and is skipped).
    - ``num_workers=N`` builds batches on N threads (0: one thread; not given: one per core).
      ``num_threads`` overrides it. ``prefetch_factor`` keeps ``prefetch_factor * N`` batches
      ready (else ``prefetch``). The threads live as long as the loader, so ``persistent_workers``
      changes nothing but when ``worker_init_fn`` runs: it is called in this process with each
      worker id 0..N-1 at the start of every epoch (once, with ``persistent_workers=True``); no
      Python runs on the Rust threads. ``multiprocessing_context`` is accepted and has nothing to
      configure (no processes are started); batches always come in order (``in_order``). Steps
      of the transform that run in Python (see fastcifar.transforms) run on one background
      thread, ``prefetch`` batches ahead (``num_workers=0``: in the iterating thread, as torch).
    - ``pin_memory=True`` gives page-locked batches when CUDA exists (with ``device="cuda"`` they
      are also copied to the GPU without blocking); without CUDA it warns that nothing was pinned,
      as torch does. ``timeout`` > 0 raises when a batch takes longer.
    - ``generator`` draws the seed (below) when ``seed`` is None.
    - The data set's ``target_transform`` is applied to every label (``.targets`` stays raw).

    Randomness is a pure function of ``(seed, epoch, sample index)``: the same seed gives the same
    batches whatever the thread count. ``seed=None`` draws one from torch's generator (or
    ``generator``), so ``torch.manual_seed`` makes runs repeatable. Each ``iter()`` uses the current
    epoch and then advances it; ``set_epoch(n)`` sets it (and the sampler's, if it has one).

    ``rank`` / ``world_size`` shard the data set as ``DistributedSampler`` does: one permutation for
    all ranks (so ``seed`` must be the same on every rank), rank r takes every world_size-th index
    from r. Shards are padded to equal length by wrapping around to the first indices (or the tail
    is dropped with ``drop_last``), so every rank runs the same number of steps.
    ``pad_shards=False`` (for evaluation) pads nothing: shards then differ by at most one sample,
    and every sample is seen exactly once across ranks. ``Trainer`` shards its loaders itself when
    it trains data-parallel (``loader.shard(rank, world_size)``).

    ``resident=True`` copies the whole uint8 data set to ``device`` once and builds every batch
    there: the host draws each sample's crop and flip from the same (seed, epoch, index) stream as
    the Rust pass and sends only those index maps; the device gathers, fills and converts with the
    Rust pass's own ToTensor / Normalize values. The batches equal the Rust pass's, and nothing else
    crosses PCIe per step. It covers crops, pads (any mode), flips, ToTensor and Normalize; with
    other steps it warns and builds the batches on the host. It is for CUDA: on the CPU device it
    gives the same batches, more slowly than the fused pass.
    """

    def __init__(
        self,
        dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Iterable | None = None,
        batch_sampler: Iterable | None = None,
        num_workers: int | None = None,
        collate_fn: Callable | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], Any] | None = None,
        multiprocessing_context=None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        transform=None,
        seed: int | None = None,
        device="cpu",
        prefetch: int = 2,
        dtype: torch.dtype = torch.float32,
        num_threads: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad_shards: bool = True,
        resident: bool = False,
    ) -> None:
        a = _Arguments(
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            drop_last=drop_last,
            timeout=timeout,
            worker_init_fn=worker_init_fn,
            multiprocessing_context=multiprocessing_context,
            generator=generator,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device,
            in_order=in_order,
            transform=transform,
            seed=seed,
            device=device,
            prefetch=prefetch,
            dtype=dtype,
            num_threads=num_threads,
            rank=rank,
            world_size=world_size,
            pad_shards=pad_shards,
            resident=resident,
        )
        _check_torch_arguments(a)
        a = _check_fastcifar_arguments(a)
        self._keep_settings(a, _draw_seed(a.seed, a.generator))
        ds = _resolve(dataset)
        self.resident = False  # set by _make_resident once the batches are built on the device
        self._torch: torch.utils.data.DataLoader | None = None
        if ds is None:
            self.device = torch.device("cpu")  # torch's loader moves nothing (any other device is refused there)
            self._fall_back_to_torch(dataset, a)
            return
        self._take_dataset(ds, a)
        self._build_native(ds, a)
        self._trainer_loader: _rs.NativeLoader | None = None
        if resident:
            self._make_resident()

    def _keep_settings(self, a: _Arguments, seed: int) -> None:
        """The settings as torch's DataLoader shows them (attributes), and those a shard is built with."""
        self.batch_size, self.shuffle, self.drop_last = a.batch_size, bool(a.shuffle), a.drop_last
        self.sampler, self.batch_sampler, self.collate_fn = a.sampler, a.batch_sampler, a.collate_fn
        self.num_workers, self.pin_memory, self.timeout = a.num_workers, a.pin_memory, a.timeout
        self.worker_init_fn, self.multiprocessing_context, self.generator = (
            a.worker_init_fn,
            a.multiprocessing_context,
            a.generator,
        )
        self.prefetch_factor, self.persistent_workers = a.prefetch_factor, a.persistent_workers
        self.pin_memory_device, self.in_order = a.pin_memory_device, a.in_order
        self.seed, self.dtype = seed, a.dtype
        self.rank, self.world_size, self.pad_shards = a.rank, a.world_size, bool(a.pad_shards)
        self.epoch = 0
        self._inits_done = False
        self._options: dict[str, Any] = {k: getattr(a, k) for k in _SHARD_KEEPS}

    def _take_dataset(self, ds: Dataset, a: _Arguments) -> None:
        """The fastcifar data set, its transform (the one given, or else its own) and target
        transform, and the device; warns where torch's loader would have done otherwise."""
        # "auto" resolved; checked as the native loader checks it.
        self.device = torch.device(_rs.resolve_device(a.device))
        self.dataset = ds
        self.transform = a.transform if a.transform is not None else ds.transform
        if self.transform is None and a.dtype == torch.float32:
            # torch's DataLoader raises on such a data set's PIL images; this one converts them, so say how.
            warn_once(
                ("loader", "no-transform"),
                "fastcifar.DataLoader: the data set has no transform, so its PIL images are batched as "
                "ToTensor() would give them (float32 in [0, 1]), where torch's DataLoader raises on PIL images; "
                "pass transform=transforms.ToTensor() to say so (or dtype=torch.uint8 for the raw bytes)",
                stacklevel=3,
            )
        self.target_transform = ds.target_transform
        if a.pin_memory and not torch.cuda.is_available():
            warn_once(
                ("loader", "pin"),
                "fastcifar.DataLoader: pin_memory=True, but CUDA is not available here, so nothing was pinned: "
                "batches are in ordinary memory (as torch's DataLoader does without an accelerator)",
                stacklevel=3,
            )

    def _build_native(self, ds: Dataset, a: _Arguments) -> None:
        """The transform split into its fused Rust part and its Python steps (warned about), and
        the Rust loader over the data set (which checks the ranges, dtype and device)."""
        num_threads, prefetch = a.num_threads, a.prefetch
        if num_threads is None and a.num_workers is not None:
            num_threads = max(1, a.num_workers)
        if a.prefetch_factor is not None:
            prefetch = a.prefetch_factor * (num_threads or os.cpu_count() or 1)
        self._plan: T.Plan | None = T.Plan(self.transform) if self.transform is not None else None
        # "torch.float32" or "torch.uint8": the core checks it and names anything else (a string such as
        # "float32" goes as its repr, so that it is refused as torch's dtype argument would be).
        dtype = a.dtype
        kind = str(dtype) if isinstance(dtype, torch.dtype) else repr(dtype)
        if self._plan is not None and self._plan.rest:
            warn_python(self._plan.rest[0], self._plan.why, stacklevel=4)  # the caller of DataLoader()
            if dtype in (torch.float32, torch.uint8):  # the fused part gives what the Python steps take
                kind = "float32" if self._plan.float_out else "uint8"
            ops = self._plan.ops
        else:
            ops = T.ops_of(self.transform, kind)
        self._slow = bool(self._plan and self._plan.rest)
        self._args = (ds._native, ops)
        self._kwargs: dict[str, Any] = dict(
            batch_size=1 if a.batch_size is None else a.batch_size,
            shuffle=bool(a.shuffle),
            drop_last=bool(a.drop_last),
            seed=self.seed,
            prefetch=prefetch,
            dtype=kind,
            # Python steps run on CPU tensors; their batches move to the device afterwards.
            device="cpu" if self._slow else str(self.device),
            pin_memory=bool(a.pin_memory) and not self._slow,
            num_threads=num_threads,
            rank=a.rank,
            world_size=a.world_size,
            pad_shards=bool(a.pad_shards),
        )
        self._core = _rs.NativeLoader(*self._args, **self._kwargs)

    def _make_resident(self) -> None:
        """``resident=True``: the data set on the device and the batches built there, or a warning
        saying why the host builds them."""
        why = "some transform steps run in Python" if self._slow else None
        if why is None:
            try:
                self._core = self._core.resident()
                self.resident = True
            except ValueError as e:  # a step the device path lacks: the batches come from the host
                why = str(e)
        if why is not None:
            warnings.warn(f"DataLoader(resident=True): {why}; building batches on the host instead", stacklevel=3)

    def _fall_back_to_torch(self, dataset, a: _Arguments) -> None:
        changed = [k for k in _FASTCIFAR_ONLY if not (getattr(a, k) is _DEFAULTS[k] or getattr(a, k) == _DEFAULTS[k])]
        if changed:
            raise TypeError(
                f"fastcifar.DataLoader: {', '.join(changed)} need a fastcifar data set "
                "(CIFAR10, ImageFolder, Dataset.from_numpy, "
                f"or a Subset / ConcatDataset of them), got {type(dataset).__name__}"
            )
        warn_once(
            ("loader", "torch", type(dataset).__name__),
            f"fastcifar.DataLoader: {type(dataset).__name__} is not a fastcifar data set, "
            "so torch.utils.data.DataLoader "
            f"iterates it (no fused Rust pass)",
        )
        self.dataset, self.transform, self.target_transform = dataset, None, None
        self._torch = torch.utils.data.DataLoader(
            dataset,
            a.batch_size,
            a.shuffle,
            a.sampler,
            a.batch_sampler,
            a.num_workers or 0,
            a.collate_fn,
            a.pin_memory,
            a.drop_last,
            a.timeout,
            a.worker_init_fn,
            a.multiprocessing_context,
            a.generator,
            prefetch_factor=a.prefetch_factor,
            persistent_workers=a.persistent_workers,
            pin_memory_device=a.pin_memory_device,
            in_order=a.in_order,
        )

    def shard(self, rank: int, world_size: int, pad_shards: bool | None = None, seed: int | None = None) -> DataLoader:
        """The same loader restricted to shard ``rank`` of ``world_size`` (see the class notes)."""
        if self._torch is not None:
            raise TypeError(f"shard: {type(self.dataset).__name__} is not a fastcifar data set")
        o = dict(self._options)
        return DataLoader(
            self.dataset,
            self.batch_size,
            self.shuffle or None,
            drop_last=self.drop_last,
            transform=self.transform,
            seed=self.seed if seed is None else seed,
            device=self.device,
            dtype=self.dtype,
            rank=rank,
            world_size=world_size,
            pad_shards=self.pad_shards if pad_shards is None else pad_shards,
            resident=self.resident,
            **o,
        )

    def _batches(self) -> list[list[int]]:
        n = len(self.dataset)
        if self.batch_sampler is not None:
            return [positions(b, n, "batch_sampler") for b in self.batch_sampler]
        assert self.sampler is not None  # _batches runs only with a sampler or a batch_sampler
        idx = positions(self.sampler, n, "sampler")
        b = self.batch_size or 1
        batches = [idx[k : k + b] for k in range(0, len(idx), b)]
        if self.drop_last and batches and len(batches[-1]) < b:
            batches.pop()
        return batches

    def __len__(self) -> int:
        if self._torch is not None:
            return len(self._torch)
        # A sampler without __len__ raises TypeError here, as in torch's DataLoader.
        if self.batch_sampler is not None:
            return len(cast(Sized, self.batch_sampler))
        if self.sampler is not None:
            n, b = len(cast(Sized, self.sampler)), self.batch_size or 1
            return n // b if self.drop_last else -(-n // b)
        return len(self._core)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the loader yields."""
        return self._core.out_shape

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch the next iteration uses (its shuffle and augmentations)."""
        try:
            epoch = operator.index(epoch)
        except TypeError:
            raise TypeError(f"epoch: must be an int, got {epoch!r}") from None
        if epoch < 0:
            raise ValueError(f"epoch: must be >= 0, got {epoch}")
        self.epoch = epoch
        for s in (self.sampler, self.batch_sampler):
            if s is not None and hasattr(s, "set_epoch"):
                s.set_epoch(self.epoch)

    def __iter__(self) -> Iterator:
        if self._torch is not None:
            return iter(self._torch)
        epoch = self.epoch
        self.epoch += 1
        workers = self.num_workers or 0
        if self.worker_init_fn is not None and workers > 0 and not (self.persistent_workers and self._inits_done):
            for i in range(workers):
                self.worker_init_fn(i)
            self._inits_done = True
        if self.sampler is None and self.batch_sampler is None:
            it = self._core.epoch(epoch)
        else:
            it = self._core.epoch_batches(epoch=epoch, batches=self._batches())
        if self.timeout:
            it.set_timeout(seconds=float(self.timeout))
        plain = (
            not self._slow
            and self.target_transform is None
            and self.batch_size is not None
            and (self.collate_fn is None or self.collate_fn is default_collate)
        )
        if plain:
            return it
        if self._slow and self.num_workers != 0:
            # As torch's workers do: the Python steps of the next batches run while this one is used.
            return _in_background(lambda stop: self._finish(it, stop), self._kwargs["prefetch"])
        return self._finish(it)

    def _finish(self, it, stop: threading.Event | None = None) -> Iterator:
        """Batches through what torch does in Python: the Python steps of the transform, the
        target_transform, the collate_fn, and unbatched items for batch_size=None. ``stop`` (set
        when a background consumer goes away) is checked before each image."""
        plan, tt = self._plan, self.target_transform
        for x, y in it:
            labels = [tt(v) for v in y.tolist()] if tt is not None else None
            images = None
            if self._slow and plan is not None:  # _slow is only set with a plan (that has Python steps)
                images = []
                for img in x:
                    if stop is not None and stop.is_set():
                        return
                    images.append(plan.run_rest(img))
            if self.batch_size is None:  # torch: no batching, samples as the data set gives them
                img = images[0] if images is not None else x[0]
                yield self._to_device(img), (labels[0] if labels is not None else int(y[0]))
                continue
            if self.collate_fn is not None and self.collate_fn is not default_collate:
                imgs = images if images is not None else list(x.unbind(0))
                yield self.collate_fn(list(zip(imgs, labels if labels is not None else y.tolist())))
                continue
            # torch's default_collate takes no PIL images; a transform without ToTensor gives tensors here.
            xb = x if images is None else default_collate([T.PILToTensor()(im) if is_pil(im) else im for im in images])
            if (
                isinstance(xb, torch.Tensor)
                and images is not None
                and self.dtype == torch.float32
                and xb.dtype == torch.uint8
            ):
                xb = xb.float()
            yb = y if labels is None else default_collate(labels)
            yield self._to_device(xb), self._to_device(yb)

    # Pickling and copying, as torch's DataLoader allows (even mid-iteration: iterators are separate
    # objects): the Rust loaders are left out and rebuilt from the same data set, ops and settings.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for k in ("_core", "_trainer_loader", "_args"):
            state.pop(k, None)
        if self._torch is None:
            state["_ops"] = self._args[1]
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        ops = state.pop("_ops", None)
        self.__dict__.update(state)
        if self._torch is None:
            self._args = (self.dataset._native, ops)
            self._core = _rs.NativeLoader(*self._args, **self._kwargs)
            self._trainer_loader = None

    def _to_device(self, v):
        if self._slow and isinstance(v, torch.Tensor) and v.device != self.device:
            return v.to(self.device, non_blocking=bool(self.pin_memory))
        return v

    def __repr__(self) -> str:
        if self._torch is not None:
            return f"DataLoader(torch.utils.data.DataLoader over {type(self.dataset).__name__}, batches={len(self)})"
        return (
            f"DataLoader(batches={len(self)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, device={self.device}, dtype={self.dtype})"
        )


# fastcifar's own arguments: refused (when not at their defaults) over a data set that torch's loader iterates.
_FASTCIFAR_ONLY = (
    "transform",
    "seed",
    "device",
    "prefetch",
    "dtype",
    "num_threads",
    "rank",
    "world_size",
    "pad_shards",
    "resident",
)
_DEFAULTS = {k: p.default for k, p in inspect.signature(DataLoader.__init__).parameters.items()}


def fast_path(loader) -> _rs.NativeLoader | str:
    """The Rust loader ``Trainer`` runs ``loader`` through (its loop then never enters Python), or
    the reason why not, a sentence (the trainer then pulls the batches through Python, once per step,
    and warns once with it). Only when everything the loader does happens in Rust; labels through
    ``target_transform`` are applied once, here (the first time: the result is kept)."""
    if not isinstance(loader, DataLoader):
        return f"{type(loader).__module__}.{type(loader).__name__} is torch's loader"
    if loader._torch is not None:
        return f"it iterates a {type(loader.dataset).__name__}, not a fastcifar data set, with torch's DataLoader"
    if loader._slow:
        assert loader._plan is not None  # _slow is only set with a plan (that has Python steps)
        return f"{loader._plan.rest[0]!r} runs in Python (the transforms fastcifar.transforms lists stay in Rust)"
    for name in ("sampler", "batch_sampler", "collate_fn"):
        if getattr(loader, name) is not None:
            return f"it has a {name}= (batches drawn in Python)"
    if loader.target_transform is None:
        return loader._core
    if loader._trainer_loader is None:
        labels = [loader.target_transform(int(y)) for y in loader.dataset.targets]
        wrong = [v for v in labels if not _is_int_label(v)]
        if wrong:
            return f"its target_transform returns {type(wrong[0]).__name__}, not integer class labels"
        core = _rs.NativeLoader(*loader._args, **loader._kwargs, labels=[int(v) for v in labels])
        loader._trainer_loader = core.resident() if loader.resident else core
    return loader._trainer_loader
