"""torchvision's MNIST, FashionMNIST and SVHN, decoded in Rust (``src/data/idx.rs``, ``mat.rs``).

Their signatures, folder layouts, attributes and items are torchvision's: ``MNIST.data`` is a uint8
(N, 28, 28) tensor and ``.targets`` an int64 tensor, ``SVHN.data`` a uint8 (N, 3, 32, 32) array
and ``.labels`` an int64 array; items are ``(PIL image, int)``. Underneath, the images are one
Rust buffer, as for CIFAR10, so the DataLoader, transforms and Trainer take them the same way.
"""

from __future__ import annotations

import gzip
import os
import shutil
import warnings
from typing import Callable

import numpy as np
import torch

from .. import _native as _rs
from .datasets import Dataset, _from_numpy, download_url

__all__ = ["MNIST", "FashionMNIST", "SVHN"]


class MNIST(Dataset):
    """MNIST as torchvision has it, decoded in Rust.

    The files are ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each plain or
    gzipped (``.gz``, read in place); they may also sit directly in ``root`` (as Debian's
    ``dataset-fashion-mnist`` installs them in /usr/share/datasets/fashion-mnist). torchvision's
    old ``root/MNIST/processed/{training,test}.pt`` files load too, when no raw files are found.
    Checksums of local files are not checked, only their structure.

    ``download=True`` fetches the four ``.gz`` files of ``resources`` into ``raw_folder`` from the
    first of ``mirrors`` that answers, checks their md5, and extracts them beside (as torchvision
    does, so that both read the same folder).

    ``data`` is a uint8 (N, 28, 28) tensor and ``targets`` an int64 tensor, as in torchvision:
    both are writable, and what is written into them (in place, or assigned) is what items, the
    DataLoader and the Trainer see next.
    """

    mirrors = [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ]
    resources = [
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ]
    training_file = "training.pt"
    test_file = "test.pt"
    classes = [
        "0 - zero",
        "1 - one",
        "2 - two",
        "3 - three",
        "4 - four",
        "5 - five",
        "6 - six",
        "7 - seven",
        "8 - eight",
        "9 - nine",
    ]

    # The tensors handed out as .data / .targets, and their version counters when last read into
    # the Rust buffer: a write into either (torch bumps the counter) rebuilds it at the next use.
    _data_t: torch.Tensor | None = None
    _data_v: int | None = None
    _targets_t: torch.Tensor | None = None
    _targets_v: int | None = None

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        download: bool = False,
    ) -> None:
        self.root = os.path.expanduser(os.fspath(root))
        self.train = train
        if download:
            self.download()
        native, self.source = _load_idx(self.root, type(self).__name__, bool(train), list(self.classes))
        super().__init__(native, transform, target_transform)

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, type(self).__name__, "raw")

    @property
    def processed_folder(self) -> str:
        return os.path.join(self.root, type(self).__name__, "processed")

    @property
    def split(self) -> str:
        return "Train" if self.train else "Test"

    # torchvision's attributes: tensors ------------------------------------------------------
    @property  # type: ignore[override]
    def data(self) -> torch.Tensor:
        """uint8 (N, H, W) tensor (torchvision's layout), writable."""
        if self._data_t is None:
            hwc = Dataset.data.fget(self)  # type: ignore[attr-defined]
            self._data_t = torch.from_numpy(np.array(hwc[..., 0]))  # a writable copy
            self._data_v = self._data_t._version
        return self._data_t

    @data.setter
    def data(self, images) -> None:
        self._data_t = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
        self._data_v = None  # not yet in the Rust buffer

    @property  # type: ignore[override]
    def targets(self) -> torch.Tensor:
        """int64 (N,) tensor, writable."""
        if self._targets_t is None:
            self._targets_t = torch.from_numpy(np.asarray(Dataset.targets.fget(self), dtype=np.int64))  # type: ignore[attr-defined]
            self._targets_v = self._targets_t._version
        return self._targets_t

    @targets.setter
    def targets(self, labels) -> None:
        self._targets_t = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
        self._targets_v = None

    @property
    def _native(self) -> _rs.NativeDataset:
        data_new = self._data_t is not None and self._data_t._version != self._data_v
        targets_new = self._targets_t is not None and self._targets_t._version != self._targets_v
        if data_new or targets_new:
            if data_new:
                Dataset.data.fset(self, self._data_t.detach().cpu().numpy())  # type: ignore[attr-defined, union-attr]
            if targets_new:
                Dataset.targets.fset(self, self._targets_t.detach().cpu().reshape(-1).tolist())  # type: ignore[attr-defined, union-attr]
            native = Dataset._native.fget(self)  # type: ignore[attr-defined]
            self._data_v = None if self._data_t is None else self._data_t._version
            self._targets_v = None if self._targets_t is None else self._targets_t._version
            return native
        return Dataset._native.fget(self)  # type: ignore[attr-defined]

    # torchvision's deprecated names, with its warnings.
    train_labels = property(lambda self: self._renamed("train_labels", "targets"))
    test_labels = property(lambda self: self._renamed("test_labels", "targets"))
    train_data = property(lambda self: self._renamed("train_data", "data"))
    test_data = property(lambda self: self._renamed("test_data", "data"))

    def _renamed(self, old: str, new: str):
        warnings.warn(f"{old} has been renamed {new}", stacklevel=3)
        return getattr(self, new)

    # download ---------------------------------------------------------------------------------
    def _check_exists(self) -> bool:
        """Whether every file of ``resources`` is in ``raw_folder`` or ``root``, plain or gzipped."""

        def present(gz_name: str) -> bool:
            return any(
                os.path.isfile(os.path.join(d, n))
                for d in (self.raw_folder, self.root)
                for n in (gz_name, gz_name[: -len(".gz")])
            )

        return all(present(name) for name, _ in self.resources)

    def download(self) -> None:
        """Fetches the files of ``resources`` that are missing, trying each mirror in turn."""
        if self._check_exists():
            return
        os.makedirs(self.raw_folder, exist_ok=True)
        for filename, md5 in self.resources:
            plain = os.path.join(self.raw_folder, filename[: -len(".gz")])
            dest = os.path.join(self.raw_folder, filename)
            if os.path.isfile(plain):
                continue
            if not os.path.isfile(dest):
                errors = []
                for mirror in self.mirrors:
                    try:
                        download_url(f"{mirror}{filename}", dest, md5)
                        break
                    except RuntimeError as e:
                        errors.append(str(e))
                else:
                    raise RuntimeError(
                        f"{'; '.join(errors)}. Without internet, download {self.mirrors[0]}{filename} elsewhere "
                        f"and put {filename} (or its extracted {os.path.basename(plain)}) into "
                        f"{os.path.abspath(self.raw_folder)}"
                    )
            _gunzip(dest, plain)

    # pickling (DataLoader workers started with spawn or forkserver) --------------------------
    def _recipe(self) -> tuple:
        if self._rebuilt:
            return super()._recipe()
        return ("idx", os.path.abspath(self.root), type(self).__name__, bool(self.train), list(self.classes))

    def __getstate__(self) -> dict:
        self._native  # noqa: B018 - writes into .data / .targets reach the recipe first
        state = super().__getstate__()
        for k in ("_data_t", "_data_v", "_targets_t", "_targets_v"):
            state.pop(k, None)  # rebuilt from the Rust data set when next read
        return state

    def __setstate__(self, state: dict) -> None:
        _set_state(self, state, "idx", _load_idx)


class FashionMNIST(MNIST):
    """Fashion-MNIST as torchvision has it: ``root/FashionMNIST/raw/...``, as for MNIST."""

    mirrors = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
    resources = [
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ]
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _load_idx(root: str, folder: str, train: bool, classes: list) -> tuple[_rs.NativeDataset, str]:
    """The raw IDX files (Rust), else torchvision's old processed ``.pt`` files."""
    try:
        return _rs.load_idx(root, folder, train, classes)
    except FileNotFoundError:
        processed = os.path.join(root, folder, "processed")
        files = [os.path.join(processed, MNIST.training_file), os.path.join(processed, MNIST.test_file)]
        if not all(os.path.isfile(f) for f in files):
            raise
    path = files[0 if train else 1]
    data, targets = torch.load(path, weights_only=True)
    return _from_numpy(data.numpy(), targets.numpy(), classes), path


def _set_state(ds: Dataset, state: dict, kind: str, load: Callable) -> None:
    """Unpickles ``ds``: re-read from its files when the recipe is ``kind`` (``load(*args)`` gives
    the native data set first), else by the base class (a changed data set travels by value)."""
    recipe, *args = state["_native_recipe"]
    if recipe != kind:
        return Dataset.__setstate__(ds, state)
    state = dict(state)
    del state["_native_recipe"]
    ds.__dict__.update(state)
    ds._native_ds = load(*args)[0]


def _gunzip(src: str, dest: str) -> None:
    """Extracts ``src`` to ``dest`` atomically (``dest.part`` then rename)."""
    part = dest + ".part"
    with gzip.open(src, "rb") as f, open(part, "wb") as out:
        shutil.copyfileobj(f, out, 1 << 20)
    os.replace(part, dest)


class SVHN(Dataset):
    """SVHN as torchvision has it, decoded in Rust (torchvision needs scipy for this; fastcifar
    does not).

    The file is ``root/{train,test,extra}_32x32.mat`` (``split``), a MATLAB file with ``X`` uint8
    (32, 32, 3, N) and ``y`` (N, 1); label 10 is the digit 0 and becomes 0, as in torchvision.
    Compressed (MATLAB's default) and uncompressed files load; the md5 of a local file is not
    checked (torchvision checks it), only its structure.

    ``data`` is a read-only uint8 (N, 3, 32, 32) array (torchvision's layout) and ``labels`` a
    read-only int64 array; assign them to change the data set. ``download=True`` fetches
    ``url`` unless the file is there, checking ``file_md5``.
    """

    split_list = {
        "train": [
            "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
            "train_32x32.mat",
            "e26dedcc434d2e4c54c9b2d4a06d8373",
        ],
        "test": [
            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
            "test_32x32.mat",
            "eb5a983be6a315427106f1b164d9cef3",
        ],
        "extra": [
            "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat",
            "extra_32x32.mat",
            "a93ce644f1a588dc4d68dda5feec44a7",
        ],
    }
    _CLASSES = [str(i) for i in range(10)]

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        download: bool = False,
    ) -> None:
        if split not in self.split_list:
            valid = ", ".join(map(repr, self.split_list))
            raise ValueError(f"Unknown value '{split}' for argument split. Valid values are {{{valid}}}.")
        self.root = os.path.expanduser(os.fspath(root))
        self.split = split
        self.url, self.filename, self.file_md5 = self.split_list[split]
        if download:
            self.download()
        native, self.source = _rs.load_svhn(self.root, self.filename, self._CLASSES)
        super().__init__(native, transform, target_transform)

    @property
    def data(self) -> np.ndarray:
        """uint8 (N, 3, H, W), read-only (torchvision's layout)."""
        return Dataset.data.fget(self).transpose(0, 3, 1, 2)  # type: ignore[attr-defined]

    @data.setter
    def data(self, images) -> None:
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"data: expected (N, 3, H, W), got shape {images.shape}")
        Dataset.data.fset(self, images.transpose(0, 2, 3, 1))  # type: ignore[attr-defined]

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,), read-only."""
        targets = self.targets
        cached = self.__dict__.get("_labels")
        if cached is None or cached[0] is not targets:
            arr = np.asarray(targets, dtype=np.int64)
            arr.setflags(write=False)
            cached = self._labels = (targets, arr)
        return cached[1]

    @labels.setter
    def labels(self, labels) -> None:
        self.targets = labels

    def download(self) -> None:
        """Fetches ``url`` into ``root`` unless the file is already there."""
        dest = os.path.join(self.root, self.filename)
        if os.path.isfile(dest):
            return
        try:
            download_url(self.url, dest, self.file_md5)
        except RuntimeError as e:
            raise RuntimeError(
                f"{e}. Without internet, download {self.url} elsewhere and put {self.filename} "
                f"into {os.path.abspath(self.root)}"
            ) from e

    def _recipe(self) -> tuple:
        if self._rebuilt:
            return super()._recipe()
        return ("svhn", os.path.abspath(self.root), self.filename, self._CLASSES)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_labels", None)
        return state

    def __setstate__(self, state: dict) -> None:
        _set_state(self, state, "svhn", _rs.load_svhn)
