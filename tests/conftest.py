"""Shared fixtures: small generated CIFAR files for format tests, and the real data for parity tests.

Real-data tests find CIFAR-10 (as ../shared/datasets/build_cifar10.py writes it) through the
FASTCIFAR_DATA environment variable (`make test` sets it and builds the data); without it they skip.
"""

import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

CLASSES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def real_data_root():
    root = os.environ.get("FASTCIFAR_DATA")
    if not root or not os.path.isdir(os.path.join(root, "cifar-10-batches-bin")):
        return None
    return root


@pytest.fixture(scope="session")
def real_data():
    root = real_data_root()
    if root is None:
        pytest.skip("real CIFAR-10 not found: set FASTCIFAR_DATA (make test builds it from ../shared/datasets)")
    return root


class Py2Str(bytes):
    """Pickled as a Python 2 str (SHORT_BINSTRING / BINSTRING), as the official files have them."""


class Py2Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj):
        n = len(obj)
        self.write(
            (pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + bytes(obj)
        )
        self.memoize(obj)

    def save_ndarray(self, a):
        w = self.write

        def glob(mod, name):
            w(pickle.GLOBAL + mod.encode() + b"\n" + name.encode() + b"\n")

        glob("numpy.core.multiarray", "_reconstruct")
        glob("numpy", "ndarray")
        self.save((0,))
        self.save(Py2Str(b"b"))
        w(pickle.TUPLE3 + pickle.REDUCE + pickle.MARK)
        self.save(1)
        self.save(tuple(a.shape))
        glob("numpy", "dtype")
        for v in (Py2Str(a.dtype.str[1:].encode()), 0, 1):
            self.save(v)
        w(pickle.TUPLE3 + pickle.REDUCE + pickle.MARK)
        for v in (3, Py2Str(b"|"), None, None, None, -1, -1, 0):
            self.save(v)
        w(pickle.TUPLE + pickle.BUILD)
        self.save(False)
        self.save(Py2Str(a.tobytes()))
        w(pickle.TUPLE + pickle.BUILD)

    dispatch[Py2Str] = save_py2str
    dispatch[np.ndarray] = save_ndarray


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def fake_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root, n_train=(3, 2, 2, 2, 1), n_test=4, layouts=("py", "bin"), archives=False):
    """Writes a tiny CIFAR-10 in the official layouts; returns {split: (images (N,32,32,3), labels)}."""
    rng = np.random.default_rng(0)
    out = {}
    py_dir, bin_dir = os.path.join(root, "cifar-10-batches-py"), os.path.join(root, "cifar-10-batches-bin")
    batches = [(f"data_batch_{i + 1}", n) for i, n in enumerate(n_train)] + [("test_batch", n_test)]
    for d, lay in ((py_dir, "py"), (bin_dir, "bin")):
        if lay in layouts:
            os.makedirs(d, exist_ok=True)
    all_x, all_y = {"train": [], "test": []}, {"train": [], "test": []}
    for k, (name, n) in enumerate(batches):
        x = fake_images(n, k)
        y = rng.integers(0, 10, size=n)
        split = "test" if name == "test_batch" else "train"
        all_x[split].append(x)
        all_y[split].append(y)
        if "py" in layouts:
            d = {
                Py2Str(b"batch_label"): Py2Str(name.encode()),
                Py2Str(b"labels"): [int(v) for v in y],
                Py2Str(b"data"): x,
                Py2Str(b"filenames"): [Py2Str(f"f{i}.png".encode()) for i in range(n)],
            }
            open(os.path.join(py_dir, name), "wb").write(py2_pickle(d))
        if "bin" in layouts:
            rec = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1)
            rec.tofile(os.path.join(bin_dir, name + ".bin"))
    if "py" in layouts:
        meta = {Py2Str(b"label_names"): [Py2Str(c.encode()) for c in CLASSES10], Py2Str(b"num_vis"): 3072}
        open(os.path.join(py_dir, "batches.meta"), "wb").write(py2_pickle(meta))
    if "bin" in layouts:
        open(os.path.join(bin_dir, "batches.meta.txt"), "w").write("\n".join(CLASSES10) + "\n\n")
    if archives:
        for d, name in ((py_dir, "cifar-10-python.tar.gz"), (bin_dir, "cifar-10-binary.tar.gz")):
            if os.path.isdir(d):
                with tarfile.open(os.path.join(root, name), "w:gz") as t:
                    t.add(d, arcname=os.path.basename(d))
    for s in ("train", "test"):
        x = np.concatenate(all_x[s]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        out[s] = (x, np.concatenate(all_y[s]).tolist())
    return out


def write_cifar100(root, n_train=5, n_test=3):
    """Tiny CIFAR-100 in both layouts; returns {split: (images, fine, coarse)}."""
    py_dir, bin_dir = os.path.join(root, "cifar-100-python"), os.path.join(root, "cifar-100-binary")
    os.makedirs(py_dir, exist_ok=True)
    os.makedirs(bin_dir, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    fine_names = [f"fine{i}" for i in range(100)]
    coarse_names = [f"coarse{i}" for i in range(20)]
    for split, n in (("train", n_train), ("test", n_test)):
        x = fake_images(n, 10 + n)
        fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
        d = {
            Py2Str(b"data"): x,
            Py2Str(b"fine_labels"): [int(v) for v in fine],
            Py2Str(b"coarse_labels"): [int(v) for v in coarse],
            Py2Str(b"filenames"): [Py2Str(b"a.png")] * n,
            Py2Str(b"batch_label"): Py2Str(split.encode()),
        }
        open(os.path.join(py_dir, split), "wb").write(py2_pickle(d))
        rec = np.concatenate([coarse.astype(np.uint8)[:, None], fine.astype(np.uint8)[:, None], x], axis=1)
        rec.tofile(os.path.join(bin_dir, split + ".bin"))
        out[split] = (x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), fine.tolist(), coarse.tolist())
    meta = {
        Py2Str(b"fine_label_names"): [Py2Str(c.encode()) for c in fine_names],
        Py2Str(b"coarse_label_names"): [Py2Str(c.encode()) for c in coarse_names],
    }
    open(os.path.join(py_dir, "meta"), "wb").write(py2_pickle(meta))
    open(os.path.join(bin_dir, "fine_label_names.txt"), "w").write("\n".join(fine_names) + "\n")
    open(os.path.join(bin_dir, "coarse_label_names.txt"), "w").write("\n".join(coarse_names) + "\n")
    return out
