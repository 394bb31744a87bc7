"""MNIST, FashionMNIST (IDX, plain and gzipped) and SVHN (level-5 MAT-files, compressed or not):
torchvision's layouts, attributes and items, checked against torchvision's own classes on the same
files; bad files; download; the loader, pickling and the Trainer on 1-channel 28x28 images; and
Debian's real Fashion-MNIST where it is installed."""

import gzip
import hashlib
import os
import pickle
import shutil
import socket
import struct
import sys
import types
import zlib

import numpy as np
import pytest
import test_datasets
import torch

import fastcifar
from fastcifar import transforms as T

tvd = pytest.importorskip("torchvision.datasets")
tvt = pytest.importorskip("torchvision.transforms")

try:  # torchvision's SVHN reads with scipy; without it, the tests give it the arrays written
    import scipy.io as _sio
except ImportError:
    _sio = None

DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"
http_root = test_datasets.http_root  # the loopback server fixture (tmp_path/www)


# --- IDX files --------------------------------------------------------------------------------


def idx_bytes(a: np.ndarray, type_byte: int = 0x08) -> bytes:
    return bytes([0, 0, type_byte, a.ndim]) + b"".join(struct.pack(">I", s) for s in a.shape) + a.tobytes()


def digits(n=12, seed=0, size=28):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_idx(folder, x, y, split="train", gz=False):
    os.makedirs(folder, exist_ok=True)
    for name, a in ((f"{split}-images-idx3-ubyte", x), (f"{split}-labels-idx1-ubyte", y)):
        data = idx_bytes(a)
        if gz:
            name, data = name + ".gz", gzip.compress(data)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def mnist_root(tmp_path, cls="MNIST", gz=False, n=(12, 5)):
    """Both splits in torchvision's layout; returns the root and the arrays written."""
    raw = tmp_path / cls / "raw"
    truth = {}
    for split, k, seed in (("train", n[0], 0), ("t10k", n[1], 1)):
        truth[split] = digits(k, seed)
        write_idx(raw, *truth[split], split=split, gz=gz)
    return tmp_path, truth


def gunzip_tree(src_dir, dest_dir):
    """Plain copies of every .gz file (torchvision reads only the extracted files)."""
    os.makedirs(dest_dir, exist_ok=True)
    for name in os.listdir(src_dir):
        if name.endswith(".gz"):
            with gzip.open(os.path.join(src_dir, name)) as f, open(os.path.join(dest_dir, name[:-3]), "wb") as out:
                shutil.copyfileobj(f, out)


def assert_same_as_torchvision(ours, theirs):
    assert isinstance(ours.data, torch.Tensor) and ours.data.dtype == torch.uint8
    assert torch.equal(ours.data, theirs.data)
    assert isinstance(ours.targets, torch.Tensor) and ours.targets.dtype == torch.int64
    assert torch.equal(ours.targets, theirs.targets)
    assert ours.classes == theirs.classes and ours.class_to_idx == theirs.class_to_idx
    assert len(ours) == len(theirs)
    for i in range(len(ours)):
        (a, la), (b, lb) = ours[i], theirs[i]
        assert a.mode == b.mode == "L" and a.size == b.size
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert la == lb and type(la) is int


@pytest.mark.parametrize("cls", ["MNIST", "FashionMNIST"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_sets_match_torchvision(tmp_path, cls, gz):
    root, _ = mnist_root(tmp_path / "ours", cls, gz=gz)
    if gz:  # torchvision's copy of the same bytes, extracted
        gunzip_tree(root / cls / "raw", tmp_path / "tv" / cls / "raw")
    tv_root = tmp_path / "tv" if gz else root
    for train in (True, False):
        ours = getattr(fastcifar, cls)(root, train=train)
        theirs = getattr(tvd, cls)(tv_root, train=train)
        assert_same_as_torchvision(ours, theirs)
        assert ours.raw_folder == theirs.raw_folder.replace(str(tv_root), str(root))
        assert ours.source == str(root / cls / "raw") and ours.split == ("Train" if train else "Test")
    assert fastcifar.datasets.MNIST is fastcifar.MNIST and fastcifar.FashionMNIST.classes[9] == "Ankle boot"


def test_flat_folder_gz_only_and_plain_preferred(tmp_path):
    x, y = digits(6)
    write_idx(tmp_path, x, y, gz=True)  # Debian's layout: the .gz files directly in the folder
    ds = fastcifar.FashionMNIST(tmp_path)
    assert ds.source == str(tmp_path) and torch.equal(ds.data, torch.from_numpy(x))
    # Plain files win over .gz ones (they are what torchvision reads); raw/ wins over the flat folder.
    write_idx(tmp_path, 255 - x, y)
    assert torch.equal(fastcifar.FashionMNIST(tmp_path).data, torch.from_numpy(255 - x))
    write_idx(tmp_path / "FashionMNIST" / "raw", x[:2], y[:2])
    assert len(fastcifar.FashionMNIST(tmp_path)) == 2


def test_torchvision_legacy_processed_files_load(tmp_path):
    x, y = digits(5)
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    torch.save((torch.from_numpy(x), torch.from_numpy(y).long()), processed / "training.pt")
    torch.save((torch.from_numpy(x[:2]), torch.from_numpy(y[:2]).long()), processed / "test.pt")
    ours, theirs = fastcifar.MNIST(tmp_path), tvd.MNIST(tmp_path)
    assert_same_as_torchvision(ours, theirs)
    assert len(fastcifar.MNIST(tmp_path, train=False)) == 2
    assert pickle.loads(pickle.dumps(ours))[4][1] == int(y[4])


def test_data_and_targets_are_writable_tensors_as_in_torchvision(tmp_path):
    root, _ = mnist_root(tmp_path)
    ds = fastcifar.MNIST(root, transform=T.ToTensor())
    ds.data[0] = 7  # in place, as torchvision users do
    ds.targets[1] = 3
    assert torch.all(ds[0][0] == 7 / 255) and ds[1][1] == 3
    batch_x, batch_y = next(iter(fastcifar.DataLoader(ds, batch_size=4)))
    assert torch.all(batch_x[0] == 7 / 255) and batch_y[1] == 3
    # The subset idiom: assign both.
    keep = ds.targets < 5
    ds.data, ds.targets = ds.data[keep], ds.targets[keep]
    assert len(ds) == int(keep.sum()) and bool((ds.targets < 5).all())
    # Assigned arrays work too; mismatched lengths are named.
    ds.data = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(ValueError, match="data has 3 images but targets has"):
        len(ds)
    ds.targets = [1, 2, 3]
    assert len(ds) == 3 and ds[2][1] == 3 and isinstance(ds.targets, torch.Tensor)
    with pytest.warns(UserWarning, match="renamed targets"):
        assert ds.train_labels is ds.targets


def test_pickles_by_path_until_changed(tmp_path):
    root, truth = mnist_root(tmp_path)
    ds = fastcifar.MNIST(root, train=False, transform=T.ToTensor())
    state = ds.__getstate__()
    assert state["_native_recipe"][0] == "idx" and "_data_t" not in state
    ds.data  # noqa: B018 - a read alone keeps the recipe by path
    assert ds.__getstate__()["_native_recipe"][0] == "idx"
    back = pickle.loads(pickle.dumps(ds))
    assert type(back) is fastcifar.MNIST and torch.equal(back.data, torch.from_numpy(truth["t10k"][0]))
    ds.data[0, 0, 0] = 1 if ds.data[0, 0, 0] != 1 else 2
    assert ds.__getstate__()["_native_recipe"][0] == "numpy"  # a written tensor travels by value
    assert torch.equal(pickle.loads(pickle.dumps(ds)).data, ds.data)


@pytest.mark.subprocess
def test_torch_spawn_workers_rebuild_mnist_and_svhn_from_their_files(tmp_path):
    root, _ = mnist_root(tmp_path, n=(8, 2))
    x, y = svhn_arrays(8)
    write_mat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    for ds in (fastcifar.MNIST(root, transform=T.ToTensor()), fastcifar.SVHN(tmp_path, transform=T.ToTensor())):
        dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context="spawn")
        xs, ys = zip(*dl)
        assert torch.equal(torch.cat(xs), torch.stack([ds[i][0] for i in range(8)]))
        assert torch.cat(ys).tolist() == [ds[i][1] for i in range(8)]


def test_loader_fused_pass_matches_torchvision_on_one_channel(tmp_path):
    root, _ = mnist_root(tmp_path, n=(40, 5))
    mean, std = (0.1307,), (0.3081,)
    theirs = tvd.MNIST(
        root, transform=tvt.Compose([tvt.Pad(2), tvt.CenterCrop(28), tvt.ToTensor(), tvt.Normalize(mean, std)])
    )
    ours = fastcifar.MNIST(root, transform=theirs.transform)  # torchvision's own Compose, fused
    x, y = next(iter(fastcifar.DataLoader(ours, batch_size=40)))
    assert x.shape == (40, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, torch.stack([theirs[i][0] for i in range(40)]))
    assert torch.equal(y, theirs.targets)
    # Random augmentation on 1 channel runs fused too, and stays inside the padded image.
    aug = fastcifar.DataLoader(
        fastcifar.MNIST(root, transform=T.Compose([T.RandomCrop(28, padding=4), T.ToTensor()])), batch_size=8
    )
    assert next(iter(aug))[0].shape == (8, 1, 28, 28)


def learnable_mnist(root, n=128, seed=0):
    """A tiny MNIST-layout set whose class is a bright square's position: learnable in seconds."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 5)
        x[i, 4 + 12 * r : 12 + 12 * r, 1 + 5 * col : 6 + 5 * col] = 255
    write_idx(os.path.join(root, "MNIST", "raw"), x, y, split="train", gz=True)
    write_idx(os.path.join(root, "MNIST", "raw"), x[:64], y[:64], split="t10k", gz=True)


def test_trainer_learns_a_synthetic_mnist(tmp_path):
    learnable_mnist(tmp_path)
    tf = T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])
    train = fastcifar.DataLoader(fastcifar.MNIST(tmp_path, transform=tf), batch_size=32, shuffle=True, seed=0)
    test = fastcifar.DataLoader(fastcifar.MNIST(tmp_path, train=False, transform=tf), batch_size=64)
    torch.manual_seed(0)
    model = fastcifar.models.ImageClassifier(in_channels=1, input_size=28)
    trainer = fastcifar.Trainer(model, optimizer=fastcifar.optim.Adam(lr=1e-3), device="cpu")
    history = trainer.fit(train, test, epochs=2, progress=False)
    assert history["val_accuracy"][-1] > 0.5, history  # chance is 0.1
    assert trainer.classes == fastcifar.MNIST.classes
    img, _ = fastcifar.MNIST(tmp_path, train=False)[0]
    assert img.mode == "L" and 0 <= trainer.predict(img).item() < 10  # a PIL image as the data set gives it


# --- SVHN -------------------------------------------------------------------------------------

_MI = {np.dtype(np.uint8): (2, 9), np.dtype(np.float64): (9, 6), np.dtype(np.int32): (5, 12)}


def _element(ty: int, data: bytes) -> bytes:
    if len(data) <= 4:  # the small element form, as MATLAB writes short names
        return struct.pack("<HH", ty, len(data)) + data.ljust(4, b"\0")
    return struct.pack("<II", ty, len(data)) + data + b"\0" * (-len(data) % 8)


def mat_bytes(variables: dict, compress: bool) -> bytes:
    """A level-5 MAT-file as MATLAB (and scipy.io.savemat) write it: column-major arrays."""
    out = (
        b"MATLAB 5.0 MAT-file, written by fastcifar's tests".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    )
    for name, a in variables.items():
        a = np.asarray(a)
        mi, mx = _MI[a.dtype]
        body = (
            _element(6, struct.pack("<II", mx, 0))
            + _element(5, struct.pack(f"<{a.ndim}i", *a.shape))
            + _element(1, name.encode())
            + _element(mi, a.tobytes(order="F"))
        )
        element = struct.pack("<II", 14, len(body)) + body
        if compress:
            z = zlib.compress(element)
            element = struct.pack("<II", 15, len(z)) + z
        out += element
    return out


def write_mat(path, variables: dict, compress=True):
    if _sio is not None:  # scipy, where installed, writes the files as torchvision's users have them
        _sio.savemat(path, variables, do_compression=compress)
    else:
        with open(path, "wb") as f:
            f.write(mat_bytes(variables, compress))


def svhn_arrays(n=9, seed=0, label_dtype=np.uint8):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(label_dtype).reshape(n, 1)  # 1..10, 10 meaning the digit 0
    return x, y


@pytest.fixture
def torchvision_svhn(monkeypatch):
    """torchvision's SVHN on the test's files: md5 not checked (they are not the official files);
    without scipy, its loadmat returns the arrays the test wrote."""
    written = {}
    if _sio is None:
        fake = types.ModuleType("scipy.io")
        fake.loadmat = lambda path: written[os.fspath(path)]
        parent = types.ModuleType("scipy")
        parent.io = fake
        monkeypatch.setitem(sys.modules, "scipy", parent)
        monkeypatch.setitem(sys.modules, "scipy.io", fake)
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)

    def make(root, split, x, y, compress):
        path = os.path.join(root, f"{split}_32x32.mat")
        write_mat(path, {"X": x, "y": y}, compress)
        written[path] = {"X": x, "y": y}
        return tvd.SVHN(root, split=split)

    return make


@pytest.mark.parametrize("compress", [True, False], ids=["compressed", "plain"])
@pytest.mark.parametrize("label_dtype", [np.uint8, np.float64])
def test_svhn_matches_torchvision(tmp_path, torchvision_svhn, compress, label_dtype):
    for split in ("train", "test", "extra"):
        x, y = svhn_arrays(11, seed=len(split), label_dtype=label_dtype)
        theirs = torchvision_svhn(str(tmp_path), split, x, y, compress)
        ours = fastcifar.SVHN(tmp_path, split=split)
        assert isinstance(ours.data, np.ndarray) and ours.data.shape == (11, 3, 32, 32) and ours.data.dtype == np.uint8
        np.testing.assert_array_equal(ours.data, theirs.data)
        np.testing.assert_array_equal(ours.labels, theirs.labels)
        assert ours.labels.dtype == np.int64 and 0 in ours.labels and 10 not in ours.labels
        for i in range(len(ours)):
            (a, la), (b, lb) = ours[i], theirs[i]
            assert a.mode == b.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b))
            assert la == lb and type(la) is int
        assert ours.source == os.path.join(str(tmp_path), f"{split}_32x32.mat") and ours.split == split


def test_svhn_attributes_loader_and_pickling(tmp_path):
    x, y = svhn_arrays(8)
    write_mat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    ds = fastcifar.SVHN(tmp_path, split="test", transform=T.ToTensor())
    assert ds.classes == [str(i) for i in range(10)] and len(ds) == 8
    with pytest.raises(ValueError):
        ds.data[0, 0, 0, 0] = 1  # read-only, as fastcifar's CIFAR10 .data
    with pytest.raises(ValueError):
        ds.labels[0] = 1
    xb, yb = next(iter(fastcifar.DataLoader(ds, batch_size=8)))
    assert torch.equal(xb, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()).float() / 255)
    assert yb.tolist() == ds.labels.tolist()
    # ConcatDataset reads the images in the loader's layout, not .data's (N, 3, H, W).
    xc, _ = next(iter(fastcifar.DataLoader(torch.utils.data.ConcatDataset([ds, ds]), batch_size=16)))
    assert torch.equal(xc, torch.cat([xb, xb]))
    assert ds.__getstate__()["_native_recipe"][0] == "svhn"
    back = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(back.data, ds.data)
    ds.data, ds.labels = ds.data[:3], ds.labels[:3]
    assert len(ds) == 3 and ds.data.shape == (3, 3, 32, 32) and ds.__getstate__()["_native_recipe"][0] == "numpy"
    with pytest.raises(ValueError, match=r"Unknown value 'valid' for argument split. Valid values are \{'train'"):
        fastcifar.SVHN(tmp_path, split="valid")


# --- malformed files (tests/BAD_INPUTS.md) ------------------------------------------------------


def _err(exc, match, fn):
    with pytest.raises(exc, match=match):
        fn()


def test_idx_malformed_files_are_named(tmp_path):
    x, y = digits(4)
    raw = tmp_path / "MNIST" / "raw"
    cases = {
        "truncated": (
            idx_bytes(x)[:-5],
            idx_bytes(y),
            r"train-images-idx3-ubyte: 3147 bytes, but its header declares \[4, 28, 28\] values, "
            r"which take 3152 bytes \(truncated\?\)",
        ),
        "trailing": (idx_bytes(x) + b"\0", idx_bytes(y), r"trailing bytes\?"),
        "magic": (b"PK\3\4" + idx_bytes(x)[4:], idx_bytes(y), r"not an IDX file"),
        "int16": (idx_bytes(x.astype(">i2"), 0x0B), idx_bytes(y), r"IDX file of int16 values: MNIST images are uint8"),
        "labels as images": (idx_bytes(y), idx_bytes(y), r"IDX file of 1 dimensions: MNIST images have 3"),
        "count": (idx_bytes(x), idx_bytes(y[:3]), r"train-labels-idx1-ubyte: 3 labels, but .* holds 4 images"),
        "label range": (idx_bytes(x), idx_bytes(np.array([0, 1, 10, 2], np.uint8)), r"label 10 at index 2 is out"),
        "huge header": (
            idx_bytes(x)[:4] + struct.pack(">III", 2**31, 2**16, 2**16),
            idx_bytes(y),
            r"more than the 4 GiB",
        ),
        "gz truncated": (gzip.compress(idx_bytes(x))[:-20], idx_bytes(y), r"train-images-idx3-ubyte.gz: "),
    }
    for name, (images, labels, match) in cases.items():
        shutil.rmtree(raw, ignore_errors=True)
        raw.mkdir(parents=True)
        suffix = ".gz" if name.startswith("gz") else ""
        (raw / f"train-images-idx3-ubyte{suffix}").write_bytes(images)
        (raw / "train-labels-idx1-ubyte").write_bytes(labels)
        _err(ValueError, match, lambda: fastcifar.MNIST(tmp_path))


def test_idx_missing_files_and_fifos(tmp_path):
    _err(FileNotFoundError, "data folder does not exist", lambda: fastcifar.MNIST(tmp_path / "nope"))
    _err(
        FileNotFoundError,
        r"no MNIST data found: expected MNIST/raw/train-images-idx3-ubyte .* download=True",
        lambda: fastcifar.MNIST(tmp_path),
    )
    raw = tmp_path / "MNIST" / "raw"
    x, y = digits(2)
    write_idx(raw, x, y)
    (raw / "train-labels-idx1-ubyte").unlink()
    _err(FileNotFoundError, r"train-labels-idx1-ubyte: no such file \(nor .gz\)", lambda: fastcifar.MNIST(tmp_path))
    os.mkfifo(raw / "train-labels-idx1-ubyte")  # would block a reader that opened it
    _err(ValueError, r"train-labels-idx1-ubyte: not a regular file \(a FIFO", lambda: fastcifar.MNIST(tmp_path))


def test_mat_malformed_files_are_named(tmp_path):
    x, y = svhn_arrays(3)
    path = tmp_path / "train_32x32.mat"
    good = mat_bytes({"X": x, "y": y}, compress=True)
    v73 = bytearray(mat_bytes({}, False))
    v73[124:126] = struct.pack("<H", 0x0200)
    cases = {
        "empty": (b"", r"0 bytes: too short for a MAT-file"),
        "not MAT": (b"\0" * 300, r"not a MATLAB 5 MAT-file"),
        "v7.3": (bytes(v73), r"MAT v7.3 \(HDF5\) file"),
        "truncated": (good[:-3], r"declares \d+ bytes, but only \d+ remain"),
        "no X": (
            mat_bytes({"y": y, "Z": x}, True),
            r"no variable 'X' \(the images, uint8 \(32, 32, 3, N\)\) in the file, which holds: y, Z",
        ),
        "X double": (mat_bytes({"X": x.astype(np.float64), "y": y}, False), r"variable 'X': is a double array"),
        "X 2-D": (mat_bytes({"X": x[:, :, 0, 0], "y": y}, False), r"variable 'X': has dimensions \[32, 32\]"),
        "label 11": (
            mat_bytes({"X": x, "y": y + 10}, True),
            r"variable 'y': label 11 at index 0 is not a whole number from 1 to 10",
        ),
        "label 2.5": (mat_bytes({"X": x, "y": y / 2}, True), r"label 0.5 at index 0 is not a whole number"),
        "counts": (mat_bytes({"X": x, "y": y[:2]}, True), r"X holds 3 images but y has 2 labels"),
        "corrupt zlib": (good[:140] + bytes(b ^ 0x5A for b in good[140:200]) + good[200:], r"train_32x32.mat: "),
    }
    for data, match in cases.values():
        path.write_bytes(data)
        _err(ValueError, match, lambda: fastcifar.SVHN(tmp_path))
    path.unlink()
    _err(
        FileNotFoundError,
        r"SVHN's train_32x32.mat goes directly in .* \(pass download=True",
        lambda: fastcifar.SVHN(tmp_path),
    )
    os.mkfifo(path)
    _err(ValueError, r"train_32x32.mat: not a regular file", lambda: fastcifar.SVHN(tmp_path))


# --- download ---------------------------------------------------------------------------------


def dead_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/"


def test_mnist_download_tries_mirrors_checks_md5_and_extracts(tmp_path, http_root, monkeypatch):
    www, base = http_root[0], http_root[1] + "/"
    src, truth = mnist_root(tmp_path / "src", gz=True)
    resources = []
    for name in sorted(os.listdir(src / "MNIST" / "raw")):
        data = (src / "MNIST" / "raw" / name).read_bytes()
        (www / name).write_bytes(data)
        resources.append((name, hashlib.md5(data).hexdigest()))
    monkeypatch.setattr(fastcifar.MNIST, "mirrors", [dead_url(), base])  # the first mirror is down
    monkeypatch.setattr(fastcifar.MNIST, "resources", resources)
    root = tmp_path / "root"
    ds = fastcifar.MNIST(root, download=True)
    assert torch.equal(ds.data, torch.from_numpy(truth["train"][0]))
    raw = root / "MNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted([n for n, _ in resources] + [n[:-3] for n, _ in resources])
    assert_same_as_torchvision(ds, tvd.MNIST(root))  # torchvision reads the same folder
    for name, _ in resources:
        (www / name).unlink()  # a second call must not fetch again
    assert len(fastcifar.MNIST(root, train=False, download=True)) == 5


def test_mnist_download_offline_and_md5_mismatch(tmp_path, http_root, monkeypatch):
    www, base = http_root[0], http_root[1] + "/"
    monkeypatch.setattr(fastcifar.MNIST, "mirrors", [dead_url()])
    raw = tmp_path / "MNIST" / "raw"
    _err(
        RuntimeError,
        r"Without internet, download http://127.0.0.1:\d+/train-images-idx3-ubyte.gz elsewhere and put "
        rf"train-images-idx3-ubyte.gz \(or its extracted train-images-idx3-ubyte\) into {raw}",
        lambda: fastcifar.MNIST(tmp_path, download=True),
    )
    (www / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"x" * 100))
    monkeypatch.setattr(fastcifar.MNIST, "mirrors", [base])
    _err(RuntimeError, "md5", lambda: fastcifar.MNIST(tmp_path, download=True))
    assert not any(raw.iterdir())


def test_svhn_download_and_offline(tmp_path, http_root, monkeypatch):
    www, base = http_root[0], http_root[1] + "/"
    x, y = svhn_arrays(4)
    write_mat(www / "test_32x32.mat", {"X": x, "y": y})
    body = (www / "test_32x32.mat").read_bytes()
    split_list = dict(
        fastcifar.SVHN.split_list, test=[base + "test_32x32.mat", "test_32x32.mat", hashlib.md5(body).hexdigest()]
    )
    monkeypatch.setattr(fastcifar.SVHN, "split_list", split_list)
    ds = fastcifar.SVHN(tmp_path / "root", split="test", download=True)
    assert len(ds) == 4 and (tmp_path / "root" / "test_32x32.mat").read_bytes() == body
    (www / "test_32x32.mat").unlink()
    assert len(fastcifar.SVHN(tmp_path / "root", split="test", download=True)) == 4  # not fetched again
    split_list["train"] = [dead_url() + "train_32x32.mat", "train_32x32.mat", "0" * 32]
    _err(
        RuntimeError,
        rf"Without internet, download .*train_32x32.mat elsewhere and put train_32x32.mat into {tmp_path}",
        lambda: fastcifar.SVHN(tmp_path, download=True),
    )


# --- real data: Debian's dataset-fashion-mnist (CI installs it) --------------------------------


@pytest.mark.skipif(
    not os.path.isdir(DEBIAN_FASHION), reason=f"{DEBIAN_FASHION} not installed (apt-get install dataset-fashion-mnist)"
)
def test_real_fashion_mnist_matches_torchvision(tmp_path):
    gunzip_tree(DEBIAN_FASHION, tmp_path / "FashionMNIST" / "raw")  # torchvision reads plain files only
    for train, n in ((True, 60000), (False, 10000)):
        ours = fastcifar.FashionMNIST(DEBIAN_FASHION, train=train)
        theirs = tvd.FashionMNIST(tmp_path, train=train)
        assert len(ours) == n and ours.data.shape == (n, 28, 28)
        assert torch.equal(ours.data, theirs.data) and torch.equal(ours.targets, theirs.targets)
        assert ours.class_counts() == {c: n // 10 for c in theirs.classes}  # balanced, as published
        for i in (0, n // 2, n - 1):
            (a, la), (b, lb) = ours[i], theirs[i]
            assert la == lb and np.array_equal(np.asarray(a), np.asarray(b))
