"""Transforms and the DataLoader: torchvision semantics, determinism, errors, drop-in use."""

import os
import threading

import numpy as np
import pytest
import torch

import fastcifar
from fastcifar import transforms as T

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
tv = pytest.importorskip("torchvision")
import torchvision.transforms as TV  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from _internals import core, native_dataset, native_loader  # noqa: E402


def random_ds(n=64, h=32, w=32, c=3, seed=0, transform=None):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    return fastcifar.Dataset.from_numpy(
        x, rng.integers(0, 10, n), classes=[str(i) for i in range(10)], transform=transform
    )


def one_epoch(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def test_shapes_dtypes_len_and_last_batch():
    ds = random_ds(50)
    dl = fastcifar.DataLoader(ds, batch_size=16)
    assert len(dl) == 4
    batches = list(dl)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(fastcifar.DataLoader(ds, batch_size=16, drop_last=True)) == 3
    assert [len(y) for _, y in fastcifar.DataLoader(ds, batch_size=16, drop_last=True)] == [16, 16, 16]


def test_no_transform_matches_torchvision_to_tensor_in_order():
    ds = random_ds(40)
    x, y = one_epoch(fastcifar.DataLoader(ds, batch_size=16))
    ref = torch.stack([TF.to_tensor(img) for img in ds.data])
    assert torch.equal(x, ref)  # bit for bit: v / 255 in float32, as torchvision computes it
    assert y.tolist() == ds.targets


def test_normalize_matches_torchvision_bit_for_bit():
    ds = random_ds(64)
    t = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    x, _ = one_epoch(fastcifar.DataLoader(ds, batch_size=32, transform=t))
    ref_t = TV.Compose([TV.ToTensor(), TV.Normalize(MEAN, STD)])
    ref = torch.stack([ref_t(img) for img in ds.data])
    assert torch.equal(x, ref)


def test_shuffle_covers_each_sample_once_and_changes_per_epoch():
    ds = random_ds(100)
    dl = fastcifar.DataLoader(ds, batch_size=7, shuffle=True, seed=3)
    _, y0 = one_epoch(dl)
    idx0 = native_loader(dl).indices(0)
    assert sorted(idx0) == list(range(100))
    assert y0.tolist() == [ds.targets[i] for i in idx0]
    assert native_loader(dl).indices(1) != idx0


def _offsets(out, img, pad, mode="constant", fill=0):
    """All (i, j) where out equals the padded image cropped there."""
    from PIL import Image

    # torchvision's PIL path (its tensor path takes no per-channel fill).
    padded = torch.from_numpy(
        np.asarray(TF.pad(Image.fromarray(img), pad, fill=fill, padding_mode=mode)).copy()
    ).permute(2, 0, 1)
    hits = []
    for i in range(2 * pad + 1):
        for j in range(2 * pad + 1):
            if torch.equal(padded[:, i : i + 32, j : j + 32], out):
                hits.append((i, j))
    return hits


@pytest.mark.parametrize("mode,fill", [("constant", (10, 20, 30)), ("reflect", 0), ("edge", 0)])
def test_crop_reads_torchvision_padding_and_offsets_are_uniform(mode, fill):
    n = 2025  # 25 per offset on average
    ds = random_ds(n, seed=1)
    t = T.RandomCrop(32, padding=4, fill=fill, padding_mode=mode)
    x, _ = one_epoch(fastcifar.DataLoader(ds, batch_size=256, transform=t, dtype=torch.uint8, seed=5))
    counts = np.zeros((9, 9))
    for k in range(n):
        hits = _offsets(x[k], ds.data[k], 4, mode, fill)
        assert hits, f"sample {k} is not a crop of torchvision's padded image"
        counts[hits[0]] += 1
    assert (counts > 0).all(), "some of the 81 offsets never occur"
    chi2 = ((counts - n / 81) ** 2 / (n / 81)).sum()
    assert chi2 < 130, f"offsets are not uniform: chi2={chi2:.1f} for 80 dof"  # p ~ 0.0004


def test_flip_rate_matches_torchvision():
    n = 4000
    ds = random_ds(n, seed=2)
    x, _ = one_epoch(
        fastcifar.DataLoader(ds, batch_size=500, transform=T.RandomHorizontalFlip(), dtype=torch.uint8, seed=9)
    )
    src = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
    flipped = (x == src.flip(-1)).flatten(1).all(1)
    same = (x == src).flatten(1).all(1)
    assert bool((flipped | same).all())
    rate = flipped.float().mean().item()
    torch.manual_seed(0)
    tv_rate = np.mean([not torch.equal(TV.RandomHorizontalFlip()(s), s) for s in src[:n]])
    assert abs(rate - 0.5) < 0.03 and abs(tv_rate - 0.5) < 0.03, (rate, tv_rate)
    assert (
        fastcifar.DataLoader(ds, transform=T.RandomHorizontalFlip(p=0.0), dtype=torch.uint8)
        .__iter__()
        .__next__()[0]
        .equal(src[:1])
    )


def test_resize_close_to_torchvision_pil():
    from PIL import Image

    ds = random_ds(8, seed=4)
    for size in (64, (20, 24)):
        x, _ = one_epoch(fastcifar.DataLoader(ds, batch_size=8, transform=T.Resize(size), dtype=torch.uint8))
        ref = torch.stack([TF.pil_to_tensor(TV.Resize(size)(Image.fromarray(a))) for a in ds.data])
        assert x.shape == ref.shape
        assert (x.int() - ref.int()).abs().max().item() <= 1  # PIL rounds through fixed point


def test_random_erasing_and_cutout():
    ds = fastcifar.Dataset.from_numpy(np.full((200, 32, 32, 3), 255, np.uint8), [0] * 200)
    t = T.Compose([T.ToTensor(), T.RandomErasing(p=1.0, value=0.25)])
    x, _ = one_epoch(fastcifar.DataLoader(ds, batch_size=50, transform=t, seed=1))
    erased = (x == 0.25).all(1)  # (N, H, W)
    frac = erased.flatten(1).float().mean(1)
    assert ((frac >= 0.02 - 1e-3) & (frac <= 0.33 + 0.02)).float().mean() > 0.9
    assert bool(((x == 0.25) | (x == 1.0)).all())
    t = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD), T.Cutout(8, value=0.0)])
    x, _ = one_epoch(fastcifar.DataLoader(ds, batch_size=50, transform=t, seed=1))
    area = (x == 0.0).all(1).flatten(1).sum(1)
    assert int(area.max()) == 64 and int(area.min()) >= 16


def test_same_batches_whatever_the_thread_count_and_prefetch():
    t = T.Compose(
        [T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD), T.RandomErasing()]
    )
    ds = random_ds(300, transform=t)
    a = one_epoch(fastcifar.DataLoader(ds, batch_size=64, shuffle=True, seed=11, num_threads=1, prefetch=1))
    b = one_epoch(fastcifar.DataLoader(ds, batch_size=64, shuffle=True, seed=11, num_threads=2, prefetch=4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    dl = fastcifar.DataLoader(ds, batch_size=64, shuffle=True, seed=11)
    e0, e1 = one_epoch(dl), one_epoch(dl)
    assert not torch.equal(e0[0], e1[0])
    dl.set_epoch(1)
    assert torch.equal(one_epoch(dl)[0], e1[0])


def test_seed_none_follows_torch_manual_seed():
    ds = random_ds(20, transform=T.RandomCrop(32, padding=4))
    torch.manual_seed(7)
    a = one_epoch(fastcifar.DataLoader(ds, batch_size=5, shuffle=True))
    torch.manual_seed(7)
    b = one_epoch(fastcifar.DataLoader(ds, batch_size=5, shuffle=True))
    assert torch.equal(a[0], b[0])


def test_uint8_batches_normalised_on_the_device_equal_float_batches():
    t = T.Compose([T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = random_ds(64, transform=t)
    f, _ = one_epoch(fastcifar.DataLoader(ds, batch_size=32, seed=2))
    u, _ = one_epoch(fastcifar.DataLoader(ds, batch_size=32, seed=2, dtype=torch.uint8))
    assert u.dtype == torch.uint8
    on_device = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])(u)
    assert (on_device - f).abs().max().item() <= 1e-6


def test_dataset_indexing_with_fastcifar_transform_and_single_image_call():
    t = T.Compose([T.RandomCrop(24), T.ToTensor()])
    ds = random_ds(4, transform=t)
    img, label = ds[2]
    assert img.shape == (3, 24, 24) and img.dtype == torch.float32 and label == ds.targets[2]
    out = T.CenterCrop(16)(ds.data[0])
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    assert torch.equal(out, torch.from_numpy(ds.data[0]).permute(2, 0, 1)[:, 8:24, 8:24])


def test_grayscale_and_other_sizes():
    ds = random_ds(10, h=28, w=20, c=1)
    x, _ = one_epoch(
        fastcifar.DataLoader(
            ds, batch_size=4, transform=T.Compose([T.RandomCrop(16), T.ToTensor(), T.Normalize([0.5], [0.5])])
        )
    )
    assert x.shape == (10, 1, 16, 16) and x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: T.RandomHorizontalFlip(p=1.5), "^p: 1.5"),
        (lambda: T.RandomHorizontalFlip(p=-0.1), "^p:"),
        (lambda: T.Normalize(MEAN, (0.2, 0.0, 0.2)), "^std:"),
        (lambda: T.Normalize((0.5, 0.5), STD), "^mean:"),
        (lambda: T.RandomCrop(0), "^size:"),
        (lambda: T.RandomCrop(32, padding=(1, 2, 3)), "^padding:"),
        (lambda: T.RandomCrop(32, padding_mode="wrap"), "^padding_mode:"),
        (lambda: T.RandomCrop(32, fill=300), "^fill:"),
        (lambda: T.RandomErasing(scale=(0.5, 0.1)), "^scale:"),
        (lambda: T.RandomErasing(value="noise"), "^value:"),
        (lambda: T.Pad(2, padding_mode="wrap"), "^padding_mode:"),
        (lambda: T.RandomResizedCrop(24, scale=(0.0, 1.0)), "^scale:"),
        (lambda: T.RandomResizedCrop(24, ratio=(2.0, 1.0)), "^ratio:"),
        (lambda: T.ColorJitter(brightness=-1), "^brightness:"),
        (lambda: T.RandomRotation(-5), "^degrees:"),
        # Negative counts: converted by the bindings, which name them as the core names its own checks.
        (lambda: T.RandomCrop(-3), "^size: -3 must not be negative"),
        (lambda: T.Pad((1, -2)), "^padding: -2 must not be negative"),
        (lambda: T.Cutout(-1), "^size: -1 must not be negative"),
        (lambda: T.Pad(1, fill=2.5), "^fill: 2.5 must be pixel values"),
    ],
)
def test_invalid_transform_parameters_name_themselves(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (
            dict(transform=T.RandomCrop(41, padding=4)),
            ValueError,
            "^size: crop 41x41 is larger than the padded image 40x40",
        ),
        (
            dict(transform=T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5), (0.2, 0.2))])),
            ValueError,
            "^mean: 2 values for 3-channel",
        ),
        (dict(transform=T.Normalize(MEAN, STD)), TypeError, "Normalize expects a float tensor, got Image"),
        (dict(batch_size=0), ValueError, "^batch_size"),
        (dict(batch_size=2.5), ValueError, "^batch_size"),
        (dict(prefetch=0), ValueError, "^prefetch"),
        (dict(num_threads=0), ValueError, "^num_threads"),
        # Python checks the type, the core the range (each rule in one place), both by name.
        (dict(batch_size=-4), ValueError, r"^batch_size: -4 must not be negative"),
        (dict(prefetch=-1), ValueError, r"^prefetch: -1 must not be negative"),
        (dict(rank=-1, world_size=2), ValueError, r"^rank: -1 must not be negative"),
        (dict(num_threads=True), ValueError, r"^num_threads=True: expected an int$"),
        (dict(dtype=torch.float64), ValueError, "^dtype"),
        (dict(device="tpu"), RuntimeError, "tpu"),
        (dict(sampler=[0, 1], shuffle=True), ValueError, "sampler option is mutually exclusive with shuffle"),
        (dict(batch_sampler=[[0, 1]], drop_last=True), ValueError, "batch_sampler option is mutually exclusive"),
        (dict(num_workers=-1), ValueError, "num_workers option should be non-negative"),
        (dict(num_workers=0, prefetch_factor=2), ValueError, "prefetch_factor option could only be specified"),
        (dict(num_workers=0, persistent_workers=True), ValueError, "persistent_workers option needs num_workers > 0"),
        (dict(timeout=-1), ValueError, "timeout option should be non-negative"),
        (dict(collate_fn=3), TypeError, "collate_fn: 3 is not callable"),
        (dict(sampler=[0, 99]), IndexError, "sampler: index 99 is out of range for 8 images"),
        (dict(sampler=[0, 1], world_size=2), ValueError, "give either a sampler"),
    ],
)
def test_invalid_loader_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        list(fastcifar.DataLoader(random_ds(8), **{"batch_size": 1 if "batch_sampler" in kwargs else 4, **kwargs}))


def test_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        fastcifar.DataLoader(random_ds(8), device="cuda")


def test_compose_takes_torchvision_transforms_and_plain_callables():
    t = T.Compose([TV.RandomCrop(32, padding=4), lambda im: im.rotate(90), TV.ToTensor()])
    plan = T.Plan(t)
    assert [o.name for o in plan.ops] == ["RandomCrop"] and len(plan.rest) == 2
    out = random_ds(4, transform=t)[0][0]
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    with pytest.raises(TypeError, match="not callable"):
        T.Compose([3])


def _threads():
    return len(os.listdir("/proc/self/task"))


def test_dropping_an_iterator_mid_epoch_stops_its_thread():
    ds = random_ds(2000)
    dl = fastcifar.DataLoader(ds, batch_size=4, prefetch=1, num_threads=1)
    before = _threads()
    it = iter(dl)
    next(it)
    assert _threads() > before
    del it
    assert _threads() == before


def test_two_loaders_in_two_python_threads():
    t = T.Compose([T.RandomCrop(32, padding=4), T.ToTensor()])
    ds = random_ds(256, transform=t)
    ref = {s: one_epoch(fastcifar.DataLoader(ds, batch_size=32, shuffle=True, seed=s)) for s in (1, 2)}
    got = {}

    def run(s):
        got[s] = one_epoch(fastcifar.DataLoader(ds, batch_size=32, shuffle=True, seed=s))

    ths = [threading.Thread(target=run, args=(s,)) for s in (1, 2)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    for s in (1, 2):
        assert torch.equal(got[s][0], ref[s][0]) and torch.equal(got[s][1], ref[s][1])


class SeedNet(torch.nn.Module):
    """A small CNN in the seed tutorial's style."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16 * 16 * 16, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        return self.fc(x.flatten(1))


def test_drop_in_for_a_plain_pytorch_training_loop():
    # The seed's own loop, unchanged, fed by fastcifar: a fixed batch is learned quickly.
    ds = random_ds(128, transform=T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)]))
    trainloader = fastcifar.DataLoader(ds, batch_size=32, shuffle=True, num_workers=2)
    torch.manual_seed(0)
    model = SeedNet()
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _epoch in range(8):
        model.train()
        for images, labels in trainloader:
            images, labels = images.to("cpu"), labels.to("cpu")
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])


def test_real_data_seed_pipeline(real_data):
    t = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
    train = fastcifar.CIFAR10(real_data, train=True, transform=t)
    dl = fastcifar.DataLoader(train, batch_size=128, shuffle=True, seed=0)
    assert len(dl) == 391
    n = 0
    for x, y in dl:  # noqa: B007 (x: the last batch, checked below)
        n += len(y)
    assert n == 50000
    assert abs(x.mean().item()) < 0.5 and 0.5 < x.std().item() < 1.5


def test_one_device_parser_for_every_entry_point():
    rs = core()

    assert rs.resolve_device("cpu") == rs.resolve_device(torch.device("cpu")) == "cpu"
    assert rs.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert rs.resolve_device(None) == str(torch.get_default_device())
    # An unknown device is both what fastcifar raised (ValueError) and what torch.device raises.
    with pytest.raises(rs.DeviceError, match="device: 'tpu' is not 'cpu', 'cuda', 'cuda:N' or 'auto'") as e:
        rs.resolve_device("tpu")
    assert isinstance(e.value, ValueError) and isinstance(e.value, RuntimeError)
    with pytest.raises(TypeError, match="device: expected a str, an int, a torch.device or None, got list"):
        rs.resolve_device(["cpu"])
    if not torch.cuda.is_available():
        for d in ("cuda", "cuda:1", torch.device("cuda", 0), 0):
            with pytest.raises(RuntimeError, match="CUDA is not available"):
                rs.resolve_device(d)
    # The loader goes through the same parser: torch.device objects and "auto" are taken as given.
    assert fastcifar.DataLoader(random_ds(4), device=torch.device("cpu")).device == torch.device("cpu")
    auto = fastcifar.DataLoader(random_ds(4), device="auto").device
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_native_loader_takes_keywords_only_and_checks_in_the_core():
    rs = core()

    ds = native_dataset(random_ds(6))
    ops = [rs.TransformOp.to_tensor()]
    with pytest.raises(TypeError):
        rs.NativeLoader(ds, ops, 2)  # batch_size is keyword-only
    loader = rs.NativeLoader(ds, ops, batch_size=4, dtype="torch.uint8", device=None)
    x, _ = next(iter(loader.epoch(0)))
    assert len(loader) == 2 and x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8
    for kw, match in [
        (dict(batch_size=0), "^batch_size: must be at least 1"),
        (dict(batch_size=-2), "^batch_size: -2 must not be negative"),
        (dict(batch_size=1, prefetch=0), "^prefetch"),
        (dict(batch_size=1, rank=2, world_size=2), "^rank"),
        (dict(batch_size=1, dtype="float64"), "^dtype: float64 is not torch.float32 or torch.uint8"),
    ]:
        with pytest.raises(ValueError, match=match):
            rs.NativeLoader(ds, ops, **kw)
