"""The data layer: every official CIFAR form, torchvision's attributes, bad files, download."""

import gzip
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import torch
from conftest import CLASSES10, Py2Str, py2_pickle, write_cifar10, write_cifar100

import fastcifar

FORMS = ["cifar-10-batches-py", "cifar-10-batches-bin", "cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"]
LAYOUT = dict(zip(FORMS, ["python", "binary", "python-archive", "binary-archive"]))


@pytest.fixture
def tiny(tmp_path):
    truth = write_cifar10(str(tmp_path), archives=True)
    return tmp_path, truth


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("train", [True, False])
def test_every_form_reads_the_same(tiny, form, train):
    root, truth = tiny
    ds = fastcifar.CIFAR10(root / form, train=train)
    x, y = truth["train" if train else "test"]
    assert ds.layout == LAYOUT[form]
    assert ds.data.shape == x.shape and ds.data.dtype == np.uint8
    np.testing.assert_array_equal(ds.data, x)
    assert ds.targets == y
    assert ds.classes == CLASSES10
    assert ds.class_to_idx["cat"] == 3
    assert len(ds) == len(y)
    img, label = ds[1]
    np.testing.assert_array_equal(img, x[1])
    assert label == y[1] and isinstance(label, int)


def test_preference_order_when_several_forms_exist(tiny):
    root, _ = tiny
    assert fastcifar.CIFAR10(root).layout == "python"
    shutil.rmtree(root / "cifar-10-batches-py")
    assert fastcifar.CIFAR10(root).layout == "binary"
    shutil.rmtree(root / "cifar-10-batches-bin")
    assert fastcifar.CIFAR10(root).layout == "python-archive"
    os.remove(root / "cifar-10-python.tar.gz")
    assert fastcifar.CIFAR10(root).layout == "binary-archive"


def test_cifar100_fine_and_coarse_in_both_layouts(tmp_path):
    truth = write_cifar100(str(tmp_path))
    for form in ("cifar-100-python", "cifar-100-binary"):
        for train, split in ((True, "train"), (False, "test")):
            x, fine, coarse = truth[split]
            ds = fastcifar.CIFAR100(tmp_path / form, train=train)
            np.testing.assert_array_equal(ds.data, x)
            assert ds.targets == fine and len(ds.classes) == 100 and ds.classes[7] == "fine7"
            ds = fastcifar.CIFAR100(tmp_path / form, train=train, label="coarse")
            assert ds.targets == coarse and len(ds.classes) == 20
    with pytest.raises(ValueError, match="label"):
        fastcifar.CIFAR100(tmp_path, label="medium")


def test_data_is_a_read_only_view_and_assignment_rebuilds(tiny):
    root, truth = tiny
    ds = fastcifar.CIFAR10(root)
    with pytest.raises(ValueError):
        ds.data[0, 0, 0, 0] = 1
    # The torchvision idiom for a subset: assign data and targets.
    ds.data = ds.data[:4]
    ds.targets = ds.targets[:4]
    assert len(ds) == 4
    np.testing.assert_array_equal(ds.data, truth["train"][0][:4])
    ds.targets = [9, 9, 9]
    with pytest.raises(ValueError, match="4 images but targets has 3"):
        len(ds)
    sub = fastcifar.CIFAR10(root).subset([2, 0])
    np.testing.assert_array_equal(sub.data, truth["train"][0][[2, 0]])


@pytest.mark.parametrize("form", FORMS)
def test_mmap_reads_the_same_and_maps_only_pickle_folders(tiny, form):
    root, truth = tiny
    for train, split in ((True, "train"), (False, "test")):
        ds = fastcifar.CIFAR10(root / form, train=train, mmap=True)
        np.testing.assert_array_equal(ds.data, truth[split][0])
        assert ds.targets == truth[split][1]
        assert not ds.data.flags.writeable
        if form != "cifar-10-batches-py":
            assert not ds.mapped  # binary records and archives are always copied
        assert not fastcifar.CIFAR10(root / form, train=train).mapped


def test_mmap_maps_whole_pages_and_survives_the_files_being_replaced(tmp_path):
    # 40 images per batch: every batch puts its pixels at the same offset, so all five map, and
    # the junctions between them (mid-page) are copied.
    truth = write_cifar10(str(tmp_path), n_train=(40,) * 5, n_test=41, layouts=("py",))
    folder = tmp_path / "cifar-10-batches-py"
    ds = fastcifar.CIFAR10(tmp_path, mmap=True)
    test = fastcifar.CIFAR10(tmp_path, train=False, mmap=True)
    assert ds.mapped and test.mapped
    np.testing.assert_array_equal(ds.data, truth["train"][0])
    # Replacing or deleting the files (not rewriting them in place) leaves the data set intact.
    for name in os.listdir(folder):
        garbage = folder / (name + ".new")
        garbage.write_bytes(b"\xff" * 300_000)
        os.replace(garbage, folder / name)
    os.remove(folder / "test_batch")
    np.testing.assert_array_equal(ds.data, truth["train"][0])
    np.testing.assert_array_equal(test.data, truth["test"][0])
    # The loader reads the mapped pages like any other buffer.
    x, y = next(iter(fastcifar.DataLoader(ds, batch_size=200, shuffle=False, dtype=torch.uint8)))
    np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), truth["train"][0])
    assert y.tolist() == truth["train"][1]


def test_mmap_cifar100_and_bad_files_and_options(tmp_path):
    truth = write_cifar100(str(tmp_path), n_train=30)
    ds = fastcifar.CIFAR100(tmp_path / "cifar-100-python", label="coarse", mmap=True)
    assert ds.mapped
    np.testing.assert_array_equal(ds.data, truth["train"][0])
    assert ds.targets == truth["train"][2]
    with pytest.raises(TypeError, match="mmap must be True or False"):
        fastcifar.CIFAR10(tmp_path, mmap="yes")
    write_cifar10(str(tmp_path / "c10"), layouts=("py",))
    f = tmp_path / "c10" / "cifar-10-batches-py" / "data_batch_2"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match="data_batch_2.*malformed pickle"):
        fastcifar.CIFAR10(tmp_path / "c10", mmap=True)


def test_indexing_edges(tiny):
    root, truth = tiny
    ds = fastcifar.CIFAR10(root, train=False)
    np.testing.assert_array_equal(ds[-1][0], truth["test"][0][-1])
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(TypeError):
        ds["0"]
    ds.target_transform = lambda t: t + 100
    assert ds[0][1] == truth["test"][1][0] + 100
    # torchvision's item semantics: a PIL image, to the transform as well.
    assert type(ds[0][0]).__name__ == "Image" and ds[0][0].size == (32, 32)
    ds.transform = lambda img: (type(img).__name__, img.size, img.mode)
    assert ds[0][0] == ("Image", (32, 32), "RGB")
    assert "Number of datapoints: 4" in repr(ds)


# --- bad input ------------------------------------------------------------------------------


def _err(exc, match, path, **kw):
    with pytest.raises(exc, match=match):
        fastcifar.CIFAR10(path, **kw)


def test_truncated_binary_file_is_named(tiny):
    root, _ = tiny
    f = root / "cifar-10-batches-bin" / "data_batch_2.bin"
    f.write_bytes(f.read_bytes()[:-100])
    _err(ValueError, r"data_batch_2\.bin.*3073-byte records", root / "cifar-10-batches-bin")


def test_wrong_record_size_is_named(tmp_path):
    # CIFAR-100 binary records (3074 bytes) where CIFAR-10's (3073) are expected.
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    (d / "batches.meta.txt").write_text("\n".join(CLASSES10))
    for i in range(1, 6):
        (d / f"data_batch_{i}.bin").write_bytes(bytes(3074 * 3))
    _err(ValueError, "3073-byte records", tmp_path)


def test_label_out_of_range_binary_and_pickle(tiny):
    root, _ = tiny
    f = root / "cifar-10-batches-bin" / "test_batch.bin"
    b = bytearray(f.read_bytes())
    b[3073] = 10  # label of record 1
    f.write_bytes(bytes(b))
    _err(ValueError, r"test_batch\.bin: record 1 has label 10", root / "cifar-10-batches-bin", train=False)
    d = {Py2Str(b"data"): np.zeros((2, 3072), np.uint8), Py2Str(b"labels"): [0, 12]}
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(py2_pickle(d))
    _err(ValueError, r"test_batch: label 12 at index 1 is out of range", root / "cifar-10-batches-py", train=False)


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda b: b[: len(b) // 2], "malformed pickle: truncated"),
        (lambda b: b"\xff" + b[1:], "malformed pickle"),
        (lambda b: b"", "malformed pickle"),
        (lambda b: py2_pickle({Py2Str(b"labels"): [1]}), "no 'data' entry"),
        (lambda b: py2_pickle({Py2Str(b"data"): np.zeros((1, 3072), np.uint8)}), "no 'labels' list"),
        (lambda b: py2_pickle({Py2Str(b"data"): np.zeros((1, 3000), np.uint8), Py2Str(b"labels"): [1]}), "shape"),
        (
            lambda b: py2_pickle({Py2Str(b"data"): np.zeros((2, 3072), np.uint8), Py2Str(b"labels"): [1]}),
            "1 labels for 2 images",
        ),
        (lambda b: py2_pickle({Py2Str(b"data"): np.zeros((1, 3072), np.float32), Py2Str(b"labels"): [1]}), "dtype f4"),
    ],
)
def test_malformed_pickles_are_named(tiny, damage, match):
    root, _ = tiny
    f = root / "cifar-10-batches-py" / "data_batch_4"
    f.write_bytes(damage(f.read_bytes()))
    _err(ValueError, "data_batch_4.*" + match, root / "cifar-10-batches-py")


def test_missing_files_and_folders(tiny, tmp_path):
    root, _ = tiny
    os.remove(root / "cifar-10-batches-py" / "batches.meta")
    _err(FileNotFoundError, r"batches\.meta", root / "cifar-10-batches-py")
    os.remove(root / "cifar-10-batches-bin" / "data_batch_5.bin")
    _err(FileNotFoundError, r"data_batch_5\.bin", root / "cifar-10-batches-bin")
    empty = tmp_path / "empty"
    empty.mkdir()
    _err(FileNotFoundError, "download=True", empty)
    _err(FileNotFoundError, "does not exist", tmp_path / "nowhere")


def test_corrupt_and_truncated_archives(tiny):
    root, _ = tiny
    a = root / "cifar-10-python.tar.gz"
    raw = a.read_bytes()
    a.write_bytes(raw[: len(raw) // 2])
    _err(ValueError, r"cifar-10-python\.tar\.gz: corrupt or truncated archive", a)
    a.write_bytes(b"not gzip at all" * 100)
    _err(ValueError, "corrupt or truncated archive", a)
    # A valid archive that lacks a member.
    with tarfile.open(a, "w:gz") as t:
        t.add(root / "cifar-10-batches-py" / "batches.meta", arcname="cifar-10-batches-py/batches.meta")
    _err(ValueError, "archive has no member data_batch_1", a)


def test_unknown_option_is_refused(tiny):
    root, _ = tiny
    with pytest.raises(TypeError, match="colour"):
        fastcifar.CIFAR10(root, colour=True)


# --- from_numpy and ImageFolder -------------------------------------------------------------


def test_from_numpy_shapes_and_errors():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    ds = fastcifar.Dataset.from_numpy(rgb, [0, 1, 2, 1, 0], classes=["a", "b", "c"])
    np.testing.assert_array_equal(ds.data, rgb)
    assert ds.shape == (3, 7, 9) and ds.classes == ["a", "b", "c"]
    gray = rgb[..., 0]
    ds = fastcifar.Dataset.from_numpy(gray, [0, 1, 2, 1, 0])
    assert ds.data.shape == (5, 7, 9, 1) and ds.classes == ["0", "1", "2"]
    np.testing.assert_array_equal(ds.data[..., 0], gray)
    with pytest.raises(TypeError, match="uint8"):
        fastcifar.Dataset.from_numpy(rgb.astype(np.float32), [0] * 5)
    with pytest.raises(ValueError, match="shape"):
        fastcifar.Dataset.from_numpy(np.zeros((5, 7, 9, 4), np.uint8), [0] * 5)
    with pytest.raises(ValueError, match="label 3 at index 1 is out of range for 3 classes"):
        fastcifar.Dataset.from_numpy(rgb, [0, 3, 0, 0, 0], classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="labels"):
        fastcifar.Dataset.from_numpy(rgb, [0, 1])
    with pytest.raises(TypeError, match="labels"):
        fastcifar.Dataset.from_numpy(rgb, [0.5] * 5)


def _image_tree(root, ext, sizes=((8, 6),)):
    from PIL import Image

    rng = np.random.default_rng(3)
    arrays = {}
    for c in ("zebra", "ant"):
        (root / c / "sub").mkdir(parents=True)
        for i in range(3):
            h, w = sizes[i % len(sizes)]
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            p = root / c / ("sub" if i == 2 else "") / f"{i}.{ext}"
            Image.fromarray(a).save(p)
            arrays[str(p)] = a
    return arrays


def test_image_folder_png_matches_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    _image_tree(tmp_path, "png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    ds = fastcifar.ImageFolder(tmp_path)
    tv = torchvision.datasets.ImageFolder(str(tmp_path))
    assert ds.classes == tv.classes == ["ant", "zebra"]
    assert ds.targets == tv.targets
    ref = np.stack([np.asarray(tv[i][0].convert("RGB")) for i in range(len(tv))])
    np.testing.assert_array_equal(ds.data, ref)


def test_image_folder_jpeg_close_to_pil_and_resize(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    _image_tree(tmp_path, "jpg", sizes=((32, 32), (20, 40)))
    with pytest.raises(ValueError, match="size="):
        fastcifar.ImageFolder(tmp_path)
    ds = fastcifar.ImageFolder(tmp_path, size=16)
    assert ds.data.shape == (6, 16, 16, 3)
    (tmp_path / "zebra" / "1.jpg").unlink()
    (tmp_path / "ant" / "1.jpg").unlink()
    ds = fastcifar.ImageFolder(tmp_path)
    tv = torchvision.datasets.ImageFolder(str(tmp_path))
    ref = np.stack([np.asarray(tv[i][0].convert("RGB")) for i in range(len(tv))]).astype(int)
    # Not libjpeg-turbo: IDCT / chroma upsampling rounding differ by a few levels.
    diff = np.abs(ds.data.astype(int) - ref)
    assert diff.max() <= 8 and diff.mean() < 1.5


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastcifar.ImageFolder(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no class subfolders"):
        fastcifar.ImageFolder(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(FileNotFoundError, match="'cat' holds no"):
        fastcifar.ImageFolder(tmp_path)
    (tmp_path / "cat" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"x\.png: cannot decode"):
        fastcifar.ImageFolder(tmp_path)


# --- download -------------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture
def http_root(tmp_path):
    """Serves tmp_path/www on a loopback port."""
    www = tmp_path / "www"
    www.mkdir()

    def handler(*a, **k):
        return _Quiet(*a, directory=str(www), **k)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield www, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_download_fetches_checks_and_reuses(tmp_path, http_root, monkeypatch):
    www, base = http_root
    src = tmp_path / "src"
    truth = write_cifar10(str(src), layouts=("py",), archives=True)
    archive = (src / "cifar-10-python.tar.gz").read_bytes()
    (www / "cifar-10-python.tar.gz").write_bytes(archive)
    monkeypatch.setattr(fastcifar.CIFAR10, "url", base + "/cifar-10-python.tar.gz")
    monkeypatch.setattr(fastcifar.CIFAR10, "tgz_md5", hashlib.md5(archive).hexdigest())
    root = tmp_path / "root"
    ds = fastcifar.CIFAR10(root, train=True, download=True)
    assert ds.layout == "python-archive" and (root / "cifar-10-python.tar.gz").exists()
    np.testing.assert_array_equal(ds.data, truth["train"][0])
    (www / "cifar-10-python.tar.gz").unlink()  # a second call must not fetch again
    assert len(fastcifar.CIFAR10(root, train=False, download=True)) == 4


def test_download_md5_mismatch_leaves_nothing(tmp_path, http_root, monkeypatch):
    www, base = http_root
    (www / "cifar-10-python.tar.gz").write_bytes(gzip.compress(b"x" * 1000))
    monkeypatch.setattr(fastcifar.CIFAR10, "url", base + "/cifar-10-python.tar.gz")
    root = tmp_path / "root"
    with pytest.raises(RuntimeError, match="md5"):
        fastcifar.CIFAR10(root, download=True)
    assert not any(root.iterdir())


def test_download_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setattr(fastcifar.CIFAR10, "url", f"http://127.0.0.1:{port}/cifar-10-python.tar.gz")
    with pytest.raises(RuntimeError, match=r"put cifar-10-python\.tar\.gz .* into " + str(tmp_path)):
        fastcifar.CIFAR10(tmp_path, download=True)


# --- the torch pin --------------------------------------------------------------------------


@pytest.mark.subprocess
def test_incompatible_torch_is_named(tmp_path):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '2.5.1+cpu'\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", "import fastcifar"], capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert "built against torch 2.11.0, but torch 2.5.1+cpu is installed" in r.stderr
    assert "undefined symbol" not in r.stderr


# --- real data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_cifar(real_data):
    tvc = pytest.importorskip("torchvision.datasets.cifar")
    orig = tvc.check_integrity
    tvc.check_integrity = lambda *a, **k: True  # the shared files are re-packed: md5s differ
    try:
        return {t: tvc.CIFAR10(real_data, train=t) for t in (True, False)}
    finally:
        tvc.check_integrity = orig


@pytest.mark.parametrize("form,mmap", [(f, False) for f in FORMS] + [("cifar-10-batches-py", True)])
def test_real_data_matches_torchvision(real_data, torchvision_cifar, form, mmap):
    for train in (True, False):
        ds = fastcifar.CIFAR10(os.path.join(real_data, form), train=train, mmap=mmap)
        assert ds.mapped == mmap
        tv = torchvision_cifar[train]
        assert ds.layout == LAYOUT[form]
        assert len(ds) == (50000 if train else 10000)
        np.testing.assert_array_equal(ds.data, tv.data)
        assert ds.targets == tv.targets
        assert ds.classes == tv.classes


def test_real_class_counts(real_data):
    ds = fastcifar.CIFAR10(real_data, train=False)
    assert ds.class_counts() == {c: 1000 for c in CLASSES10}
