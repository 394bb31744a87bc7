"""torchvision-style data sets whose images live in one Rust-owned uint8 buffer."""

from __future__ import annotations

import hashlib
import operator
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .. import _native as _rs
from .._files import check_regular

if TYPE_CHECKING:
    from ..transforms.plan import ItemPass

__all__ = [
    "Dataset",
    "CIFAR10",
    "CIFAR100",
    "ImageFolder",
    "MNIST",
    "FashionMNIST",
    "SVHN",
    "download_url",
    "MAX_IMAGE_PIXELS",
    "DecompressionBombError",
]

#: The most pixels an image file that fastcifar decodes may have (ImageFolder; ``predict``'s files
#: when Pillow is missing): larger ones raise ``DecompressionBombError``, as PIL refuses them (this
#: is PIL's threshold: twice its ``Image.MAX_IMAGE_PIXELS``, which governs the files Pillow opens
#: for ``predict``). A small file can declare a huge image (a 760 KB PNG of 16000x16000 pixels
#: decodes to 768 MB). Raise it, or set it to None (no limit), for files you trust.
MAX_IMAGE_PIXELS: int | None = _rs.DEFAULT_MAX_IMAGE_PIXELS

#: An image of more than ``MAX_IMAGE_PIXELS`` pixels, or an archive member larger than any CIFAR
#: batch (a ValueError).
DecompressionBombError = _rs.DecompressionBombError


class Dataset:
    """Images (N, H, W, C) uint8, integer targets and class names, held in Rust.

    ``data`` is a read-only numpy view of the Rust buffer (no copy); assigning ``data`` or
    ``targets`` (e.g. ``ds.data = ds.data[:1000]``) rebuilds the data set from the new arrays.
    Indexing gives ``(image, target)`` as torchvision's data sets do: a PIL image, or the output of
    ``transform`` (which gets that PIL image; fastcifar and torchvision transforms run fused), and
    the label through ``target_transform``. ``targets`` stays the raw labels, as in torchvision.
    """

    _rebuilt = False
    # Arrays assigned to .data / .targets wait here until both agree in length.
    _pending_data: np.ndarray | None = None
    _pending_targets: list | None = None
    transform = None
    # The fused pass of items (one loader, reused): never pickled or deep-copied, built again on use.
    _item_pass: ItemPass | None = None

    def __init__(self, native: _rs.NativeDataset, transform=None, target_transform=None):
        self._native_ds = native
        self.transform = transform
        self.target_transform = target_transform
        self._targets: list | None = None

    @classmethod
    def from_numpy(
        cls, images, labels, classes: Sequence[str] | None = None, transform=None, target_transform=None
    ) -> Dataset:
        """A data set from arrays you already have: ``images`` uint8 (N, H, W, C) with C 1 or 3, or
        (N, H, W) for grayscale; ``labels`` integers in ``range(len(classes))``. Without ``classes``
        they are "0" to the largest label, which must be below ``max(len(labels), 1024)``
        (a larger one is a ValueError: name the classes instead)."""
        return cls._wrap(_from_numpy(images, labels, classes), transform, target_transform)

    @classmethod
    def _wrap(cls, native, transform=None, target_transform=None) -> Dataset:
        ds = Dataset.__new__(Dataset)
        Dataset.__init__(ds, native, transform, target_transform)
        return ds

    @property
    def _native(self) -> _rs.NativeDataset:
        """The Rust data set, rebuilt first if .data or .targets were assigned."""
        if self._pending_data is not None or self._pending_targets is not None:
            # The stored forms, not the properties: a subclass may show .data in another layout.
            data = self._pending_data if self._pending_data is not None else _hwc_view(self._native_ds)
            targets = self._pending_targets if self._pending_targets is not None else self._native_ds.targets.tolist()
            if len(data) != len(targets):
                raise ValueError(
                    f"data has {len(data)} images but targets has {len(targets)} labels; "
                    "assign both with the same length"
                )
            self._native_ds = _from_numpy(data, targets, self._native_ds.classes)
            self._rebuilt = True  # no longer what the source files hold: pickled by value
            self._pending_data = self._pending_targets = self._targets = None
        return self._native_ds

    # torchvision's attributes -------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        """(N, H, W, C) uint8: a read-only view of the Rust buffer (torchvision's layout)."""
        if self._pending_data is not None:
            return self._pending_data
        return _hwc_view(self._native_ds)

    @data.setter
    def data(self, images) -> None:
        self._pending_data = np.asarray(images)

    @property
    def targets(self) -> list:
        if self._pending_targets is not None:
            return self._pending_targets
        if self._targets is None:
            self._targets = self._native_ds.targets.tolist()
        return self._targets

    @targets.setter
    def targets(self, labels) -> None:
        self._pending_targets = [int(v) for v in labels]

    def _hwc(self) -> np.ndarray:
        """The images as (N, H, W, C) uint8, whatever layout ``.data`` shows (torchvision's MNIST and
        SVHN use others): what the loader, plots and items read."""
        return _hwc_view(self._native)

    @property
    def classes(self) -> list:
        return self._native.classes

    @property
    def class_to_idx(self) -> dict:
        return {c: i for i, c in enumerate(self.classes)}

    @property
    def shape(self) -> tuple:
        """(C, H, W) of every image."""
        return self._native.shape

    def class_counts(self) -> dict:
        """Images per class name."""
        return dict(zip(self.classes, self._native.class_counts()))

    def subset(self, indices) -> Dataset:
        """A new data set of these indices (copies their images), keeping the transforms. Negative
        indices count from the end, as in Python (and ``torch.utils.data.Subset``)."""
        idx = positions(np.asarray(indices).reshape(-1).tolist(), len(self), "indices")
        sub = Dataset._wrap(self._native.select(idx), self.transform, self.target_transform)
        sub._title = f"{self._name()} (subset)"
        return sub

    def __len__(self) -> int:
        return len(self._native)

    def __getitem__(self, index: int):
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} images")
        index = int(index) % n
        target = int(self.targets[index])
        from ..transforms.base import pil_from_hwc
        from ..transforms.plan import ItemPass, Plan

        if self.transform is None:
            img = pil_from_hwc(self._hwc()[index])
        else:
            plan = Plan(self.transform)
            if plan.ops:
                if self._item_pass is None:
                    self._item_pass = ItemPass()
                img = plan.finish(self._item_pass.run(self._native, index, plan.ops))
            else:
                img = plan.run_rest(pil_from_hwc(self._hwc()[index]))
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    # pickling (DataLoader workers started with spawn or forkserver) --------------------------
    def _recipe(self) -> tuple:
        """How a worker rebuilds the Rust data set: by value here, by source in the subclasses."""
        images = _hwc_view(self._native_ds)
        return ("numpy", np.ascontiguousarray(images), self._native_ds.targets, self._native_ds.classes)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_native_ds"]
        state.pop("_item_pass", None)
        state["_native_recipe"] = self._recipe()
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        kind, *args = state.pop("_native_recipe")
        if kind == "numpy":
            native = _from_numpy(*args)
        elif kind == "cifar":
            root, variant, train, label, mmap = args
            native = _rs.NativeDataset.cifar(root, variant=variant, train=train, label=label, mmap=mmap).dataset
        else:
            root, size, max_pixels = args
            native = _rs.NativeDataset.image_folder(root, size, max_pixels=max_pixels)
        self.__dict__.update(state)
        self._native_ds = native

    # Copies within one process share the Rust data set (it is immutable) instead of rebuilding it.
    def __copy__(self):
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k != "_item_pass":
                new.__dict__[k] = v if k == "_native_ds" else copy.deepcopy(v, memo)
        return new

    # What __repr__ calls a data set that is no torchvision class: a subset says whose.
    _title: str | None = None

    def _name(self) -> str:
        if self._title:
            return self._title
        return type(self).__name__ if type(self) is not Dataset else "(from arrays)"

    def __repr__(self) -> str:
        lines = [f"Dataset {self._name()}", f"    Number of datapoints: {len(self)}"]
        for k in ("root", "split", "source"):
            if hasattr(self, k):
                lines.append(f"    {k.capitalize()}: {getattr(self, k)}")
        if self.transform is not None:
            lines.append("    Transform: " + repr(self.transform).replace("\n", "\n    "))
        return "\n".join(lines)


def _hwc_view(native: _rs.NativeDataset) -> np.ndarray:
    """A read-only (N, H, W, C) view of the Rust buffer (N, C, H, W)."""
    c, h, w = native.shape
    return native.buffer().reshape(len(native), c, h, w).transpose(0, 2, 3, 1)


def positions(indices, n: int, what: str) -> list[int]:
    """Indices into ``n`` images as Python indexes a sequence: integers only (a float is an
    IndexError, as numpy's indexing of torchvision's ``.data`` raises), negative ones from the end,
    out of range an IndexError. Checked in one place for subsets, Subset and samplers."""
    out = []
    for i in indices:
        try:
            k = operator.index(i)
        except TypeError:
            raise IndexError(
                f"{what}: {i!r} is not an integer index (only integers are valid indices, as in numpy and Python)"
            ) from None
        if not -n <= k < n:
            raise IndexError(f"{what}: index {k} is out of range for {n} images")
        out.append(k % n if n else k)
    return out


# Without `classes`, labels up to max(len(labels), this) - 1 name their own classes.
_DERIVED_CLASSES_MIN = 1024


def _from_numpy(images, labels, classes):
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images: expected dtype uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images: expected shape (N, H, W) or (N, H, W, C) with C 1 or 3, got {images.shape}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise TypeError(
            f"labels: expected a 1-D sequence of integers, got dtype {labels.dtype} and shape {labels.shape}"
        )
    if labels.size and labels.dtype.kind == "u" and int(labels.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"labels: {int(labels.max())} does not fit in int64")
    if classes is None:
        # Classes "0".."max": bounded by the input's own size, so that one stray label (2**62)
        # cannot ask for billions of class names.
        top = int(labels.max()) if labels.size else 0
        limit = max(len(labels), _DERIVED_CLASSES_MIN)
        if top >= limit:
            i = int(np.argmax(labels))
            raise ValueError(
                f"labels: label {top} at index {i} would make {top + 1} classes for {len(labels)} images "
                f"(at most {limit} are derived); pass classes=[...] with one name per class"
            )
        classes = [str(i) for i in range(top + 1)]
    return _rs.NativeDataset.from_numpy(
        np.ascontiguousarray(images), labels.astype(np.int64).tolist(), [str(c) for c in classes]
    )


def download_url(url: str, dest: str, md5: str | None = None, progress: bool = True) -> str:
    """Downloads ``url`` to ``dest`` atomically (``dest.part`` then rename), checking ``md5``."""
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    for p in (dest, part):
        check_regular(p)  # a FIFO there would block the write (or the rename) forever
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest))
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except (urllib.error.URLError, OSError) as e:
        if os.path.exists(part):
            os.remove(part)
        raise RuntimeError(f"could not download {url}: {getattr(e, 'reason', e)}") from e
    if md5 is not None and digest.hexdigest() != md5:
        os.remove(part)
        raise RuntimeError(f"{url}: downloaded file has md5 {digest.hexdigest()}, expected {md5} (corrupt download?)")
    os.replace(part, dest)
    return dest


class CIFAR10(Dataset):
    """CIFAR-10 as torchvision has it, decoded in Rust.

    ``root`` may hold any official form; the first found in this order is read:
    ``cifar-10-batches-py/`` (pickles), ``cifar-10-batches-bin/`` (binary records),
    ``cifar-10-python.tar.gz``, ``cifar-10-binary.tar.gz`` (archives are read in place, never
    extracted). ``root`` may also name one of those folders or archives itself.
    Checksums of local files are not checked (re-packed copies load), only their structure.

    ``download=True`` fetches ``url`` into ``root`` when no form is present, checking ``tgz_md5``.

    ``mmap=True`` keeps the images of an extracted pickle folder in the page cache instead of
    copying them (as ``torch.load(mmap=True)`` and ``numpy.load(mmap_mode="r")`` do): loading is a
    few page-table entries rather than 150 MB of fresh memory, and processes that load the same
    files (torchrun ranks, notebook restarts) share one copy. ``.data`` is the same read-only array
    either way. Other forms are copied regardless; ``mapped`` says which happened. The caveat is
    numpy.memmap's: do not truncate or rewrite those files in place while the data set is alive
    (replacing them, as ``tar`` or ``os.replace`` do, is safe); a truncated page kills the process
    with SIGBUS when it is read.
    """

    base_folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    filename = "cifar-10-python.tar.gz"
    tgz_md5 = "c58f30108f718f92721af3b95e74349a"
    _variant = "cifar10"

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        download: bool = False,
        mmap: bool = False,
        **kwargs: Any,
    ) -> None:
        self.root = os.path.expanduser(os.fspath(root))
        self.train = train
        if not isinstance(mmap, bool):
            raise TypeError(f"mmap must be True or False, got {mmap!r}")
        label = kwargs.pop("label", "fine")
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments: {', '.join(kwargs)}")
        if download:
            self.download()
        found = _rs.NativeDataset.cifar(self.root, variant=self._variant, train=train, label=label, mmap=mmap)
        self.layout, self.source = found.layout, found.path
        super().__init__(found.dataset, transform, target_transform)

    def _recipe(self) -> tuple:
        # Re-read from the same files (mmap=True maps the same pages) instead of copying 150 MB.
        if self._rebuilt:
            return super()._recipe()
        return (
            "cifar",
            os.path.abspath(self.root),
            self._variant,
            self.train,
            getattr(self, "label", "fine"),
            self._native_ds.mapped,
        )

    @property
    def mapped(self) -> bool:
        """Whether ``.data`` is the files' own pages (``mmap=True`` on a pickle folder), not a copy."""
        return self._native.mapped

    @property
    def split(self) -> str:
        return "Train" if self.train else "Test"

    def download(self) -> None:
        """Fetches the official archive unless some form of the data is already under ``root``."""
        try:
            _rs.NativeDataset.cifar(self.root, variant=self._variant, train=self.train)
            return  # already present and readable
        except FileNotFoundError:
            pass
        dest = os.path.join(self.root, self.filename)
        try:
            download_url(self.url, dest, self.tgz_md5)
        except RuntimeError as e:
            raise RuntimeError(
                f"{e}. Without internet, download {self.url} elsewhere and put {self.filename} "
                f"(or its extracted {self.base_folder}/ folder) into {os.path.abspath(self.root)}"
            ) from e


class CIFAR100(CIFAR10):
    """CIFAR-100; ``label="fine"`` (100 classes) or ``"coarse"`` (20 super-classes)."""

    base_folder = "cifar-100-python"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    filename = "cifar-100-python.tar.gz"
    tgz_md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    _variant = "cifar100"

    def __init__(
        self,
        root,
        train: bool = True,
        transform=None,
        target_transform=None,
        download: bool = False,
        label: str = "fine",
        mmap: bool = False,
    ):
        if label not in ("fine", "coarse"):
            raise ValueError(f"label: '{label}' is not 'fine' or 'coarse'")
        self.label = label
        super().__init__(root, train, transform, target_transform, download, mmap=mmap, label=label)


class ImageFolder(Dataset):
    """A ``root/<class>/<image>.(png|jpg|jpeg)`` tree, decoded in parallel in Rust as RGB.

    Classes are the sorted folder names. ``size`` (int or (h, w)) resizes every image (bilinear);
    without it all images must have the size of the first. An image of more than
    ``fastcifar.datasets.MAX_IMAGE_PIXELS`` pixels raises ``DecompressionBombError``.
    """

    def __init__(self, root, size=None, transform=None, target_transform=None):
        self.root = os.path.expanduser(os.fspath(root))
        if isinstance(size, int):
            size = (size, size)
        self._size = tuple(size) if size is not None else None
        self._max_pixels = MAX_IMAGE_PIXELS  # as set when the folder was read (its workers read it so)
        native = _rs.NativeDataset.image_folder(self.root, self._size, max_pixels=self._max_pixels)
        super().__init__(native, transform, target_transform)

    def _recipe(self) -> tuple:
        if self._rebuilt:
            return super()._recipe()
        return ("folder", os.path.abspath(self.root), self._size, self._max_pixels)


# torchvision's digit data sets live in their own module, on the classes above.
from .digits import MNIST, SVHN, FashionMNIST  # noqa: E402
