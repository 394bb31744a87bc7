"""The data side of issue 23: memory bombs in pickles, archives and image folders, FIFOs where files
should be, Resize against torchvision, Ctrl-C with Python transform steps, and the small deviations
of data sets, loaders and predict's inputs."""

import copy
import os
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from conftest import CLASSES10, py2_pickle

import fastcifar
from fastcifar import models
from fastcifar import transforms as T


def synthetic(n=16, seed=0, size=32):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return fastcifar.Dataset.from_numpy(images, rng.integers(0, 10, n), CLASSES10)


def cifar_py_dir(root, n=4):
    """A CIFAR-10 pickle folder of n images per batch, as the official files are written."""
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(os.path.join(d, name), "wb") as f:
            f.write(py2_pickle(batch))
    with open(os.path.join(d, "batches.meta"), "wb") as f:
        f.write(py2_pickle({b"label_names": [c.encode() for c in CLASSES10]}))
    return d


# --- item 4: the pickle memo bomb -------------------------------------------------------------------


def memo_bomb(levels: int) -> bytes:
    """A data_batch_1 whose 'data' is a list holding the previous level twice, through memo GETs
    (and a DUP per level): a few bytes a level, 2**levels leaves if each GET copied."""
    p = b"\x80\x02}q\x00U\x04data]r\x01\x00\x00\x00"
    for k in range(1, levels + 1):
        p += b"0(" + (b"j" + struct.pack("<I", k)) * 2 + b"20lr" + struct.pack("<I", k + 1)
    return p + b"s."


@pytest.mark.subprocess
def test_a_pickle_of_nested_memo_gets_is_read_in_bounded_memory(tmp_path):
    # The reader once copied the value on every GET and DUP: 22 levels took 2.3 GB and 10 s, 26
    # aborted the process. Here 40 levels load under a 512 MB allowance above what the process
    # already uses, and the batch is refused for what it is (no numpy array), naming the file.
    d = cifar_py_dir(tmp_path)
    with open(os.path.join(d, "data_batch_1"), "wb") as f:
        f.write(memo_bomb(40))
    assert len(memo_bomb(40)) < 1024
    child = textwrap.dedent("""
        import resource, sys
        import fastcifar
        used = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmData")][0]
        resource.setrlimit(resource.RLIMIT_DATA, (used + (512 << 20), resource.RLIM_INFINITY))
        try:
            fastcifar.CIFAR10(sys.argv[1])
        except ValueError as e:
            print("refused:", e)
    """)
    r = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused:" in r.stdout and "data_batch_1" in r.stdout and "numpy array" in r.stdout, r.stdout


# --- item 5: archives and image folders ------------------------------------------------------------


def test_an_archive_member_larger_than_cifar_is_refused_before_it_is_read(tmp_path):
    # A 9 MB archive can hold a 2 GB member of zeros; the header's size is checked first (here the
    # header says 2 GB and nothing follows: nothing is read, nothing allocated).
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size = 2 << 30
    raw = info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096
    with open(tmp_path / "cifar-10-python.tar.gz", "wb") as f:
        f.write(zlib.compress(raw, wbits=31))
    with pytest.raises(fastcifar.DecompressionBombError, match=r"data_batch_1: a member of 2.1 GB .*not a CIFAR file"):
        fastcifar.CIFAR10(tmp_path)
    assert issubclass(fastcifar.DecompressionBombError, ValueError)


def png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h RGB pixels and holds no image data (a bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", b"")


def test_image_folder_pixel_limit_is_pils_with_a_documented_override(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "a").mkdir()
    for i in range(12):  # twelve 16000x16000 PNGs once asked for 9.2 GB and aborted the process
        (tmp_path / "a" / f"{i}.png").write_bytes(png_header(16000, 16000))
    with pytest.raises(fastcifar.DecompressionBombError, match=r"0.png: image is 16000x16000 .*MAX_IMAGE_PIXELS"):
        fastcifar.ImageFolder(tmp_path)
    # PIL's threshold: twice its Image.MAX_IMAGE_PIXELS.
    assert fastcifar.datasets.MAX_IMAGE_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
    small = tmp_path / "small"
    (small / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(small / "a" / "0.png")
    monkeypatch.setattr(fastcifar.datasets, "MAX_IMAGE_PIXELS", 19)
    with pytest.raises(fastcifar.DecompressionBombError, match="20 pixels, more than the limit of 19"):
        fastcifar.ImageFolder(small)
    monkeypatch.setattr(fastcifar.datasets, "MAX_IMAGE_PIXELS", None)
    ds = fastcifar.ImageFolder(small)
    assert ds.shape == (3, 4, 5)
    assert pickle.loads(pickle.dumps(ds)).shape == (3, 4, 5)  # the limit it was read with travels along


def test_a_buffer_larger_than_memory_is_a_memory_error_naming_its_size(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a" / "0.png")
    info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    total = (int(info["MemTotal"].split()[0]) + int(info["SwapTotal"].split()[0])) * 1024
    side = int((total / 3) ** 0.5) + 1
    monkeypatch.setattr(fastcifar.datasets, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(MemoryError, match=rf"images: cannot allocate {3 * side * side} bytes .*memory and swap"):
        fastcifar.ImageFolder(tmp_path, size=side)


# --- item 6: FIFOs ---------------------------------------------------------------------------------


def _refused_promptly(path_of_fifo, call):
    """``call()`` must raise promptly; if it blocks on the FIFO, the test opens the FIFO's other end
    so that the call ends, and fails."""
    out: dict = {}

    def run():
        try:
            call()
        except BaseException as e:  # noqa: B902 - reported below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    hung = t.is_alive()
    if hung:
        fd = os.open(path_of_fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(10)
    assert not hung, f"blocked on the FIFO {path_of_fifo}"
    return out.get("error")


@pytest.mark.parametrize("name", ["data_batch_1", "batches.meta"])
def test_a_fifo_where_a_cifar_file_should_be_is_refused_by_name(tmp_path, name):
    d = cifar_py_dir(tmp_path)
    fifo = os.path.join(d, name)
    os.remove(fifo)
    os.mkfifo(fifo)
    e = _refused_promptly(fifo, lambda: fastcifar.CIFAR10(tmp_path))
    assert isinstance(e, ValueError) and name in str(e) and "not a regular file" in str(e), e


def test_fifos_for_archives_downloads_and_predict_are_refused_by_name(tmp_path):
    fifo = str(tmp_path / "cifar-10-python.tar.gz")
    os.mkfifo(fifo)
    e = _refused_promptly(fifo, lambda: fastcifar.CIFAR10(tmp_path))
    assert isinstance(e, ValueError) and "not a regular file" in str(e), e
    # download: the partial file it would write
    part = str(tmp_path / "x.tar.gz.part")
    os.mkfifo(part)
    e = _refused_promptly(part, lambda: fastcifar.datasets.download_url("http://127.0.0.1:9/x", part[:-5]))
    assert isinstance(e, ValueError) and "not a regular file" in str(e), e
    # predict on a path
    png = str(tmp_path / "x.png")
    os.mkfifo(png)
    tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
    e = _refused_promptly(png, lambda: tr.predict(png))
    assert isinstance(e, ValueError) and "not a regular file" in str(e), e


# --- item 8: Resize against torchvision ------------------------------------------------------------

SIZES = [(17, 45), (20, 40), (24, 48), (31, 33)] + [(h, w) for h in range(6, 50, 7) for w in range(5, 60, 9)]


def test_resize_is_pillows_pixel_for_pixel_over_many_sizes():
    # v1 on the PIL images a data set gives (fused in Rust), against torchvision itself.
    tv = pytest.importorskip("torchvision.transforms")
    ds = synthetic(4)
    for h, w in SIZES:
        t = tv.Compose([tv.Resize((h, w)), tv.PILToTensor()])
        want = torch.stack([t(ds[i][0]) for i in range(len(ds))])
        got, _ = next(iter(fastcifar.DataLoader(ds, batch_size=len(ds), transform=t, dtype=torch.uint8)))
        assert torch.equal(got, want), f"Resize(({h}, {w})): {(got != want).float().mean():.1%} of values differ"


def test_resize_of_tensors_is_torchvisions_v2_and_v1(recwarn):
    # v2's Resize after ToImage resizes a uint8 tensor; v1's Resize on a tensor casts to float.
    pytest.importorskip("torchvision")
    from torchvision import transforms as tv1
    from torchvision.transforms import v2

    ds = synthetic(4)
    for h, w in SIZES[:12]:
        t2 = v2.Compose([v2.ToImage(), v2.Resize((h, w)), v2.ToDtype(torch.float32, scale=True)])
        want = torch.stack([t2(ds[i][0]) for i in range(len(ds))])
        got, _ = next(iter(fastcifar.DataLoader(ds, batch_size=len(ds), transform=t2, num_workers=0)))
        assert torch.equal(got, want), f"v2 Resize(({h}, {w})): {(got != want).float().mean():.1%} differ"
        x = torch.from_numpy(ds.data[0].copy()).permute(2, 0, 1).contiguous()
        assert torch.equal(T.from_torchvision(tv1.Resize((h, w)))(x), tv1.Resize((h, w))(x))
        assert torch.equal(T.from_torchvision(v2.Resize((h, w)))(x), v2.Resize((h, w))(x))


# --- item 9: Ctrl-C with Python transform steps ----------------------------------------------------


def test_ctrl_c_with_python_steps_and_workers_stops_within_an_image():
    def slow(img):  # a Python step: 0.1 s an image, so a batch of 32 takes 3.2 s
        time.sleep(0.1)
        return img

    ds = synthetic(256)
    with pytest.warns(UserWarning, match="Lambda"):
        loader = fastcifar.DataLoader(
            ds, batch_size=32, num_workers=2, transform=T.Compose([T.Lambda(slow), T.ToTensor()])
        )
    main = threading.main_thread().ident
    it = iter(loader)
    # Python raises KeyboardInterrupt only where SIGINT had its default handler when it started; a
    # shell's background job (`make test &`, as in a CI wrapper) inherits SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.5, lambda: signal.pthread_kill(main, signal.SIGINT)).start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            for _ in it:
                pass
    finally:
        signal.signal(signal.SIGINT, previous)
    took = time.monotonic() - start
    assert took < 0.5 + 1.5, f"Ctrl-C took {took:.1f} s to stop the loader"
    assert not any(t.name == "fastcifar-python-steps" for t in threading.enumerate())


# --- item 10: data sets and loaders ----------------------------------------------------------------


def test_subset_takes_negative_indices_as_torch_subset_does():
    ds = synthetic(8)
    assert np.array_equal(ds.subset([-1, 0, -8]).data, ds.data[[7, 0, 0]])
    sub = torch.utils.data.Subset(ds, [-1])
    assert np.array_equal(fastcifar.DataLoader(sub, batch_size=1, transform=T.PILToTensor()).dataset.data, ds.data[[7]])
    with pytest.raises(IndexError, match="indices: index -9 is out of range for 8 images"):
        ds.subset([-9])
    with pytest.raises(IndexError, match="1.5 is not an integer index"):
        ds.subset([1.5])
    assert len(ds.subset([])) == 0


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("transform", [T.Compose([T.RandomCrop(32, padding=4), T.ToTensor()]), None])
def test_a_loader_pickles_and_deep_copies_even_mid_iteration(transform):
    ds = synthetic(20)
    loader = fastcifar.DataLoader(ds, batch_size=6, shuffle=True, transform=transform, seed=5)
    it = iter(loader)
    next(it)  # mid-iteration, as torch allows
    for twin in (copy.deepcopy(loader), pickle.loads(pickle.dumps(loader)), copy.copy(loader)):
        assert twin.epoch == loader.epoch == 1
        got = _batches(twin)
        fresh = fastcifar.DataLoader(ds, batch_size=6, shuffle=True, transform=transform, seed=5)
        fresh.set_epoch(1)
        want = _batches(fresh)
        assert len(got) == len(want) and all(
            torch.equal(g[0], w[0]) and torch.equal(g[1], w[1]) for g, w in zip(got, want)
        )
    rest = list(it)  # the original iterator is untouched by the copies
    assert len(rest) == len(loader) - 1


def test_sampler_indices_and_epochs_must_be_integers():
    ds = synthetic(8)
    with pytest.raises(IndexError, match=r"sampler: 1.7 is not an integer index"):
        list(fastcifar.DataLoader(ds, batch_size=2, sampler=[0, 1.7], transform=T.ToTensor()))
    with pytest.raises(IndexError, match=r"batch_sampler: 1.7 is not an integer index"):
        list(fastcifar.DataLoader(ds, batch_sampler=[[0, 1.7]], transform=T.ToTensor()))
    # numpy and torch integers are integers
    assert len(list(fastcifar.DataLoader(ds, batch_size=2, sampler=[np.int64(1), torch.tensor(2)]))) == 1
    loader = fastcifar.DataLoader(ds, batch_size=2)
    with pytest.raises(TypeError, match=r"epoch: must be an int, got 1.5"):
        loader.set_epoch(1.5)
    loader.set_epoch(np.int64(3))
    assert loader.epoch == 3 and type(loader.epoch) is int


# --- item 10: predict's inputs ---------------------------------------------------------------------


@pytest.fixture
def trainer():
    torch.manual_seed(0)
    tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu")
    tr.input_shape = (3, 32, 32)
    return tr


def _eager(tr, x):
    tr.model.eval()
    with torch.no_grad():
        return tr.model(x)


def test_predict_names_what_it_cannot_take(trainer):
    from PIL import Image

    with pytest.raises(ValueError, match=r"images: no images \(an empty list\)"):
        trainer.predict([])
    with pytest.raises(ValueError, match=r"images: no images \(an array of shape \(0, 32, 32, 3\)\)"):
        trainer.predict(np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="0x0 pixels: an empty image has no class"):
        trainer.predict(Image.new("RGB", (0, 0)))
    with pytest.raises(ValueError, match=r"mode F\) holds NaN or inf"):
        trainer.predict(Image.fromarray(np.full((32, 32), np.nan, np.float32), "F"))
    with pytest.raises(TypeError, match="item 1 is Tensor of dtype torch.float32"):
        trainer.predict([Image.new("RGB", (32, 32)), torch.zeros(3, 32, 32)])


def test_predict_takes_mixed_lists(trainer):
    from PIL import Image

    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    want = trainer.predict_logits(np.stack([a, b]))
    mixed = trainer.predict_logits([Image.fromarray(a), b])
    torch.testing.assert_close(mixed, want)
    torch.testing.assert_close(trainer.predict_logits([torch.from_numpy(a).permute(2, 0, 1), Image.fromarray(b)]), want)


def test_predict_applies_the_eval_transform_to_the_image_as_it_is(trainer):
    # A non-square image was squashed to 32x32 first, then Resize(40) + CenterCrop(32) ran on that.
    tv = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    pil = Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 80, 3), dtype=np.uint8))
    norm = tv.Normalize((0.5,) * 3, (0.25,) * 3)
    t = tv.Compose([tv.Resize(40), tv.CenterCrop(32), tv.ToTensor(), norm])
    want = _eager(trainer, t(pil)[None])
    torch.testing.assert_close(trainer.predict_logits(pil, transform=t), want)
    trainer.eval_transform = T.deterministic_part(t)  # as fit keeps the loader's transform
    torch.testing.assert_close(trainer.predict_logits(pil), want)
    # A transform that does not give the model's size: the image is resized to it first, as before.
    plain = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
    trainer.eval_transform = plain
    want = _eager(trainer, plain(pil.resize((32, 32), Image.Resampling.BILINEAR))[None])
    torch.testing.assert_close(trainer.predict_logits(pil), want)


def test_predict_takes_every_eval_transform_that_evaluate_takes(trainer):
    # Issue 25 point 6: a Python step (torchvision's Resize with NEAREST) in the eval transform.
    tv = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    t = tv.Compose(
        [
            tv.Resize(36, interpolation=tv.InterpolationMode.NEAREST),
            tv.CenterCrop(32),
            tv.ToTensor(),
            tv.Normalize((0.5,) * 3, (0.25,) * 3),
        ]
    )
    ds = synthetic(8)
    loader = fastcifar.DataLoader(ds, batch_size=8, transform=t)
    with pytest.warns(UserWarning):
        trainer.evaluate(loader, progress=False)
    trainer.eval_transform = T.deterministic_part(t)
    want = _eager(trainer, torch.stack([t(ds[i][0]) for i in range(8)]))
    torch.testing.assert_close(trainer.predict_logits(ds.data[:8]), want)
    torch.testing.assert_close(trainer.predict_logits([Image.fromarray(v) for v in ds.data[:8]]), want)
