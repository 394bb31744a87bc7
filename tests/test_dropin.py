"""Drop-in for torchvision (issue 13): torchvision's transform objects, item semantics, pixel
parity of every transform, torch DataLoader arguments, labels through target_transform, pickles."""

import os
import pickle
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import fastcifar
from fastcifar import _warn
from fastcifar import transforms as T

tv = pytest.importorskip("torchvision")
import torchvision.transforms as TV  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
import torchvision.transforms.v2 as V2  # noqa: E402
from _internals import iteration_loader, native_loader  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def random_ds(n=32, h=32, w=32, seed=0, **kw):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    return fastcifar.Dataset.from_numpy(x, rng.integers(0, 10, n), classes=[str(i) for i in range(10)], **kw)


def pil(a):
    return Image.fromarray(np.ascontiguousarray(a))


def epoch(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


# --- labels ------------------------------------------------------------------------------------


def test_loader_batches_carry_target_transform_of_the_raw_labels():
    ds = random_ds(40, target_transform=lambda y: y + 100)
    raw = list(ds.targets)
    assert ds[3][1] == raw[3] + 100 and ds.targets == raw  # .targets stays raw, as torchvision's
    loader = fastcifar.DataLoader(ds, batch_size=16, shuffle=True, seed=1)
    _, y = epoch(loader)
    order = iteration_loader(loader).indices(0)
    assert y.tolist() == [raw[i] + 100 for i in order]
    # The Rust trainer's loader gets the same labels, transformed once.
    x2, y2 = native_loader(loader).batch(list(range(5)), 0)
    assert y2.tolist() == [v + 100 for v in raw[:5]]
    # Non-integer labels come out as torch collates them.
    ds.target_transform = lambda y: torch.nn.functional.one_hot(torch.tensor(y), 10).float()
    _, y = next(iter(fastcifar.DataLoader(ds, batch_size=8)))
    assert y.shape == (8, 10) and y.argmax(1).tolist() == raw[:8]
    with pytest.raises(TypeError, match="integer class labels"):
        _ = native_loader(fastcifar.DataLoader(ds, batch_size=8))


# --- torchvision objects compile into the fused pass --------------------------------------------

SEED_V1 = TV.Compose([TV.RandomHorizontalFlip(), TV.RandomCrop(32, padding=4), TV.ToTensor(), TV.Normalize(MEAN, STD)])
SEED_V2 = V2.Compose(
    [
        V2.RandomHorizontalFlip(),
        V2.RandomCrop(32, padding=4),
        V2.ToImage(),
        V2.ToDtype(torch.float32, scale=True),
        V2.Normalize(MEAN, STD),
    ]
)


@pytest.mark.parametrize("t", [SEED_V1, SEED_V2], ids=["v1", "v2"])
def test_seed_transforms_compile_whole_and_match_torchvision_pixels(t):
    plan = T.Plan(t)
    assert not plan.rest and [o.name for o in plan.ops][:2] == ["RandomHorizontalFlip", "RandomCrop"]
    ds = random_ds(64, transform=t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaves the fast path
        x, _ = epoch(fastcifar.DataLoader(ds, batch_size=32, seed=3))
    # The deterministic steps alone are bit-identical to torchvision's.
    det = TV.Compose([TV.ToTensor(), TV.Normalize(MEAN, STD)]) if t is SEED_V1 else V2.Compose(t.transforms[2:])
    ref = torch.stack([det(pil(a)) for a in ds.data])
    got, _ = epoch(fastcifar.DataLoader(random_ds(64, transform=det), batch_size=32))
    assert torch.equal(got, ref)
    # The random ones give one of torchvision's outcomes (some flip and crop offset) per image.
    padded = [TF.pad(pil(a), 4) for a in ds.data]
    for k in range(0, 64, 7):
        cands = [
            det(TF.crop(TF.hflip(p) if f else p, i, j, 32, 32))
            for p in [padded[k]]
            for f in (0, 1)
            for i in range(9)
            for j in range(9)
        ]
        assert any(torch.equal(x[k], c) for c in cands), k


def test_other_callables_run_per_image_in_python_with_one_warning():
    calls = []

    def spy(img):
        calls.append(type(img).__name__)
        return img

    t = TV.Compose(
        [
            TV.RandomCrop(32, padding=4),
            TV.ColorJitter(0.4, 0.4, 0.4),
            spy,
            TV.ToTensor(),
            TV.Normalize(MEAN, STD),
            TV.Lambda(lambda x: (calls.append(type(x).__name__), x)[1]),
        ]
    )
    ds = random_ds(20, transform=t)
    _warn.forget()
    with pytest.warns(UserWarning, match="ColorJitter"):
        loader = fastcifar.DataLoader(ds, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y = epoch(loader)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    assert calls.count("Image") == 20 and calls.count("Tensor") == 20  # PIL before ToTensor, a tensor after
    img, label = ds[0]
    assert img.shape == (3, 32, 32) and label == ds.targets[0]
    # The Trainer takes this loader too: its batches come through Python, with a warning saying why.

    _warn.forget()
    tr = fastcifar.Trainer(fastcifar.models.small_cnn(width=4), device="cpu")
    with pytest.warns(UserWarning, match="through Python.*ColorJitter.*runs in Python"):
        h = tr.fit(loader, epochs=1, progress=False)
    assert len(h) == 1 and tr.evaluate(loader, progress=False).count == 20
    with pytest.warns(UserWarning, match="sampler="):
        tr.fit(fastcifar.DataLoader(random_ds(8), sampler=[0, 1]), epochs=1, progress=False)


def test_fastcifar_compose_takes_plain_callables_and_same_plan():
    t = T.Compose([T.RandomCrop(32, padding=4), TV.Grayscale(3), T.ToTensor()])
    plan = T.Plan(t)
    assert [o.name for o in plan.ops] == ["RandomCrop"] and plan.state == "pil"
    out = t(pil(random_ds(1).data[0]))
    assert out.shape == (3, 32, 32) and torch.equal(out[0], out[1])


# --- item semantics and input kinds -----------------------------------------------------------


def test_items_are_pil_images_and_transforms_take_every_image_kind():
    ds = random_ds(4)
    img, label = ds[1]
    assert isinstance(img, Image.Image) and np.array_equal(np.asarray(img), ds.data[1]) and label == ds.targets[1]
    a = ds.data[1]
    out = T.CenterCrop(20)(img)
    assert isinstance(out, Image.Image) and np.array_equal(np.asarray(out), np.asarray(TV.CenterCrop(20)(img)))
    u8 = torch.from_numpy(a.copy()).permute(2, 0, 1)
    assert torch.equal(T.CenterCrop(20)(u8), TV.CenterCrop(20)(u8))
    f = TV.ToTensor()(img)
    assert torch.equal(T.ToTensor()(img), f)
    assert torch.equal(T.CenterCrop(20)(f), TV.CenterCrop(20)(f))
    assert torch.equal(T.Pad(3, padding_mode="symmetric")(f), TV.Pad(3, padding_mode="symmetric")(f))
    n = TV.Normalize(MEAN, STD)
    assert torch.equal(T.Normalize(MEAN, STD)(f), n(f))  # CHW
    batch = torch.stack([f, f.flip(-1)])
    assert torch.equal(T.Normalize(MEAN, STD)(batch), n(batch))  # NCHW
    with pytest.raises(TypeError, match="Normalize expects a float tensor"):
        T.Normalize(MEAN, STD)(u8)


# --- fidelity ---------------------------------------------------------------------------------


def test_center_crop_rounds_half_to_even_like_torchvision():
    rng = np.random.default_rng(5)
    for h, w, ch, cw in [(32, 32, 17, 17), (32, 32, 23, 21), (31, 29, 20, 14), (9, 7, 4, 2), (32, 32, 35, 19)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(TV.CenterCrop((ch, cw))(pil(a)))
        assert np.array_equal(np.asarray(T.CenterCrop((ch, cw))(pil(a))), ref), (h, w, ch, cw)
        x, _ = next(
            iter(
                fastcifar.DataLoader(
                    fastcifar.Dataset.from_numpy(a[None], [0]), transform=T.CenterCrop((ch, cw)), dtype=torch.uint8
                )
            )
        )
        assert np.array_equal(x[0].permute(1, 2, 0).numpy(), ref)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric"])
def test_pad_every_mode_matches_torchvision_including_wide_pads(mode):
    a = random_ds(1, h=6, w=5).data[0]
    for padding in [2, (1, 3), (0, 1, 7, 9)]:
        ref = np.asarray(TV.Pad(padding, fill=(7, 8, 9) if mode == "constant" else 0, padding_mode=mode)(pil(a)))
        got = T.Pad(padding, fill=(7, 8, 9) if mode == "constant" else 0, padding_mode=mode)(pil(a))
        assert np.array_equal(np.asarray(got), ref), padding


@pytest.mark.parametrize(
    "make",
    [
        lambda P: P.Pad((1, 2, 3, 4), fill=(5, 6, 7)),
        lambda P: P.Pad([2, 3], padding_mode="edge"),
        lambda P: P.RandomCrop((36, 34), padding=(1, 2, 3, 4), padding_mode="reflect"),
        lambda P: P.RandomCrop(36, padding=(2, 4), fill=9),
    ],
)
@pytest.mark.parametrize("P", [TV, V2], ids=["v1", "v2"])
def test_torchvision_padding_arguments_keep_their_meaning(make, P):
    a = random_ds(1, seed=3).data[0]
    t = make(P)
    assert not T.Plan(t).rest
    for s in range(4):
        torch.manual_seed(s)
        ref = np.asarray(t(pil(a)))
        got = np.asarray(T.Plan(t).run_one(pil(a)))
        if isinstance(t, (TV.Pad, V2.Pad)):
            assert np.array_equal(got, ref)
        else:  # the crop offset is drawn differently: compare against every offset
            p = P.Pad(
                t.padding if P is TV else [t.padding[0], t.padding[2], t.padding[1], t.padding[3]],
                fill=9,
                padding_mode=t.padding_mode,
            )
            big = np.asarray(p(pil(a)))
            h, w = got.shape[:2]
            assert any(
                np.array_equal(got, big[i : i + h, j : j + w])
                for i in range(big.shape[0] - h + 1)
                for j in range(big.shape[1] - w + 1)
            )


def test_random_crop_symmetric_and_pad_if_needed_are_torchvision_crops():
    a = random_ds(1, h=20, w=24).data[0]
    ref = np.asarray(TF.pad(pil(a), [3, 3, 3, 3], padding_mode="symmetric"))
    for _ in range(20):
        out = np.asarray(T.RandomCrop(24, padding=3, padding_mode="symmetric")(pil(a)))
        assert any(
            np.array_equal(out, ref[i : i + 24, j : j + 24]) for i in range(3 + 3 + 20 - 24 + 1) for j in range(7)
        )
    out = T.RandomCrop(28, pad_if_needed=True)(pil(a))
    assert out.size == (28, 28)


def test_to_tensor_and_normalize_are_bit_identical_for_every_byte_and_stats():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)[..., None].repeat(3, -1)
    for mean, std in [
        (MEAN, STD),
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ((0.1,), (0.3,)),
    ]:
        for t, ref in [
            (T.Compose([T.ToTensor(), T.Normalize(mean, std)]), TV.Compose([TV.ToTensor(), TV.Normalize(mean, std)])),
            (
                TV.Compose([TV.PILToTensor(), TV.ConvertImageDtype(torch.float32), TV.Normalize(mean, std)]),
                TV.Compose([TV.PILToTensor(), TV.ConvertImageDtype(torch.float32), TV.Normalize(mean, std)]),
            ),
            (SEED_V2.transforms[2:4] + [V2.Normalize(mean, std)], None),
        ]:
            if ref is None:
                t, ref = V2.Compose(t), V2.Compose(t)
            assert not T.Plan(t).rest
            got, _ = next(iter(fastcifar.DataLoader(fastcifar.Dataset.from_numpy(x[None], [0]), transform=t)))
            assert torch.equal(got[0], ref(pil(x))), (mean, std)


def test_resize_and_random_resized_crop_give_pillows_pixels():
    ds = random_ds(6, seed=4)
    for size in (64, (20, 24), 13, (32, 17)):
        x, _ = epoch(fastcifar.DataLoader(ds, batch_size=6, transform=TV.Resize(size), dtype=torch.uint8))
        ref = torch.stack([TF.pil_to_tensor(TV.Resize(size)(pil(a))) for a in ds.data])
        assert torch.equal(x, ref), size
    # The box can be forced: with scale (0.25, 0.25) and ratio 1 it is a 16x16 square somewhere.
    t = T.RandomResizedCrop(24, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    x, _ = epoch(fastcifar.DataLoader(ds, batch_size=6, transform=t, dtype=torch.uint8, seed=2))
    for k, a in enumerate(ds.data):
        cands = [
            TF.pil_to_tensor(TF.resized_crop(pil(a), i, j, 16, 16, [24, 24])) for i in range(17) for j in range(17)
        ]
        assert any(torch.equal(x[k], c) for c in cands), k
    full = T.RandomResizedCrop((40, 40), scale=(1.0, 1.0), ratio=(1.0, 1.0))(pil(ds.data[0]))
    assert np.array_equal(np.asarray(full), np.asarray(TV.Resize((40, 40))(pil(ds.data[0]))))


def test_python_path_transforms_match_torchvision_with_the_same_torch_seed():
    img = pil(random_ds(1, seed=7).data[0])
    for ours, theirs in [
        (T.ColorJitter(0.4, 0.4, 0.4, 0.1), TV.ColorJitter(0.4, 0.4, 0.4, 0.1)),
        (T.RandomRotation(30), TV.RandomRotation(30)),
        (T.RandomRotation((10, 40), fill=(9, 8, 7)), TV.RandomRotation((10, 40), fill=(9, 8, 7))),
        (
            T.RandomResizedCrop(24, interpolation=TV.InterpolationMode.BICUBIC),
            TV.RandomResizedCrop(24, interpolation=TV.InterpolationMode.BICUBIC),
        ),
        (
            T.Lambda(lambda im: im.transpose(Image.FLIP_TOP_BOTTOM)),
            TV.Lambda(lambda im: im.transpose(Image.FLIP_TOP_BOTTOM)),
        ),
    ]:
        for s in range(3):
            torch.manual_seed(s)
            a = np.asarray(ours(img))
            torch.manual_seed(s)
            assert np.array_equal(a, np.asarray(theirs(img))), (ours, s)
    f = TV.ToTensor()(img)
    u8 = TF.pil_to_tensor(img)
    for x in (f, u8, torch.stack([f, f.flip(-1)])):  # ColorJitter's tensor arithmetic, bit for bit
        for s in range(3):
            torch.manual_seed(s)
            a = T.ColorJitter(0.4, 0.4, 0.4, 0.2)(x)
            torch.manual_seed(s)
            assert torch.equal(a, TV.ColorJitter(0.4, 0.4, 0.4, 0.2)(x)), (x.dtype, s)
    for s in range(5):
        torch.manual_seed(s)
        a = T.RandomErasing(p=0.9, value=0.25)(f)
        torch.manual_seed(s)
        assert torch.equal(a, TV.RandomErasing(p=0.9, value=0.25)(f))
        torch.manual_seed(s)
        a = T.RandomErasing(p=0.9, value="random")(f)
        torch.manual_seed(s)
        assert torch.equal(a, TV.RandomErasing(p=0.9, value="random")(f))


def test_random_erasing_from_torchvision_fuses_with_its_value_in_output_units():
    ds = fastcifar.Dataset.from_numpy(np.full((64, 32, 32, 3), 200, np.uint8), [0] * 64)
    t = TV.Compose([TV.ToTensor(), TV.Normalize(MEAN, STD), TV.RandomErasing(p=1.0, value=0.5)])
    assert not T.Plan(t).rest
    x, _ = epoch(fastcifar.DataLoader(ds, batch_size=64, transform=t, seed=0))
    base = TV.Normalize(MEAN, STD)(TV.ToTensor()(pil(ds.data[0])))
    assert bool(((x == 0.5) | (x == base)).all()) and (x == 0.5).all(1).flatten(1).any(1).float().mean() > 0.9


# --- the loader's torch arguments ---------------------------------------------------------------


def test_sampler_batch_sampler_collate_fn_and_index_lists():
    ds = random_ds(30)
    raw = fastcifar.DataLoader(ds, batch_size=30, dtype=torch.uint8)
    allx, ally = next(iter(raw))
    x, y = epoch(fastcifar.DataLoader(ds, batch_size=4, sampler=[5, 3, 29, 0, 7], dtype=torch.uint8))
    assert y.tolist() == [ally[i].item() for i in (5, 3, 29, 0, 7)] and torch.equal(x, allx[[5, 3, 29, 0, 7]])
    dl = fastcifar.DataLoader(ds, batch_sampler=[[1, 2], [9], [4, 4, 4]], dtype=torch.uint8)
    assert len(dl) == 3 and [b[1].tolist() for b in dl] == [[ally[1], ally[2]], [ally[9]], [ally[4]] * 3]
    g = torch.Generator().manual_seed(0)
    dl = fastcifar.DataLoader(ds, batch_size=7, sampler=torch.utils.data.RandomSampler(ds, generator=g), drop_last=True)
    assert len(dl) == 4 and sum(len(b[1]) for b in dl) == 28
    seen = []

    def collate(samples):
        seen.append(len(samples))
        imgs, labels = zip(*samples)
        return {"x": torch.stack(imgs), "y": torch.tensor(labels)}

    b = next(iter(fastcifar.DataLoader(ds, batch_size=8, collate_fn=collate, dtype=torch.uint8)))
    assert seen == [8] and torch.equal(b["x"], allx[:8]) and b["y"].tolist() == ally[:8].tolist()
    # Subset, ConcatDataset, generator.
    sub = torch.utils.data.Subset(ds, [3, 1, 4, 1, 5])
    x, y = epoch(fastcifar.DataLoader(sub, batch_size=2, dtype=torch.uint8))
    assert torch.equal(x, allx[[3, 1, 4, 1, 5]])
    cat = torch.utils.data.ConcatDataset([sub, ds])
    x, y = epoch(fastcifar.DataLoader(cat, batch_size=16, dtype=torch.uint8))
    assert torch.equal(x, torch.cat([allx[[3, 1, 4, 1, 5]], allx]))
    a = epoch(fastcifar.DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(4)))[1]
    b = epoch(fastcifar.DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(4)))[1]
    assert torch.equal(a, b)


def test_worker_arguments_and_pin_memory_say_what_they_do():
    ds = random_ds(16)
    ids = []
    dl = fastcifar.DataLoader(
        ds,
        batch_size=4,
        num_workers=2,
        worker_init_fn=ids.append,
        prefetch_factor=3,
        persistent_workers=True,
        multiprocessing_context="spawn",
        timeout=30,
        in_order=False,
    )
    epoch(dl), epoch(dl)
    assert ids == [0, 1]  # persistent: once
    dl = fastcifar.DataLoader(ds, batch_size=4, num_workers=2, worker_init_fn=ids.append)
    epoch(dl), epoch(dl)
    assert ids == [0, 1, 0, 1, 0, 1]
    x, _ = next(iter(fastcifar.DataLoader(ds, batch_size=None)))
    assert x.shape == (3, 32, 32)
    if not torch.cuda.is_available():
        _warn.forget(("loader", "pin"))
        with pytest.warns(UserWarning, match="nothing was pinned"):
            dl = fastcifar.DataLoader(ds, batch_size=4, pin_memory=True)
        assert not next(iter(dl))[0].is_pinned()
    else:
        assert next(iter(fastcifar.DataLoader(ds, batch_size=4, pin_memory=True)))[0].is_pinned()


def test_other_data_sets_are_iterated_by_torchs_loader():
    tds = torch.utils.data.TensorDataset(torch.arange(10.0), torch.arange(10))
    with pytest.warns(UserWarning, match="TensorDataset is not a fastcifar data set"):
        dl = fastcifar.DataLoader(tds, batch_size=4, shuffle=False)
    assert [b[1].tolist() for b in dl] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(TypeError, match="transform need a fastcifar data set"):
        fastcifar.DataLoader(tds, transform=T.ToTensor())


# --- pickles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", range(6))
@pytest.mark.parametrize("keys", ["str", "bytes"])
def test_pickles_of_every_protocol_with_str_or_bytes_keys(tmp_path, proto, keys):
    k = (lambda s: s) if keys == "str" else (lambda s: s.encode())
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(proto)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 2).tolist()
        xs.append(x), ys.append(y)
        with open(d / name, "wb") as f:
            pickle.dump(
                {
                    k("batch_label"): k(name),
                    k("labels"): y,
                    k("data"): x,
                    k("filenames"): [k("a\\n\u00e9.png"), k("b.png")],
                },
                f,
                protocol=proto,
            )
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({k("label_names"): [k(c) for c in fastcifar.CLASSES], k("num_vis"): 3072}, f, protocol=proto)
    ds = fastcifar.CIFAR10(str(tmp_path), train=True)
    assert np.array_equal(ds.data, np.concatenate(xs[:5]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert ds.targets == sum(ys[:5], []) and ds.classes == list(fastcifar.CLASSES)
    if keys == "str":  # as torchvision reads them
        with open(d / "data_batch_1", "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        assert np.array_equal(ds.data[:2], entry["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def test_python_steps_run_ahead_on_one_thread_that_stops_and_reports_errors():
    calls = []

    def step(img):
        calls.append(1)
        return img

    ds = random_ds(64, transform=TV.Compose([TV.RandomCrop(32), step, TV.ToTensor()]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = epoch(fastcifar.DataLoader(ds, batch_size=8, num_workers=0, seed=5))
        ahead = epoch(fastcifar.DataLoader(ds, batch_size=8, num_workers=2, seed=5))
    assert torch.equal(serial[0], ahead[0]) and len(calls) == 128

    def comm(tid):  # "" for a thread that ended between the listing and the read (just joined)
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def ours():  # our threads only: torch may start its own pool threads meanwhile
        names = [comm(t) for t in os.listdir("/proc/self/task")]
        return sum(n.startswith("fastcifar-prefe") for n in names), [
            t.name for t in threading.enumerate() if t.name == "fastcifar-python-steps"
        ]

    before = ours()
    it = iter(fastcifar.DataLoader(ds, batch_size=8, num_workers=2))
    next(it)
    assert ours()[1] == ["fastcifar-python-steps"]
    it.close()
    assert ours() == before and before[1] == []

    def bad(img):
        raise RuntimeError("boom in a user step")

    ds.transform = TV.Compose([TV.RandomCrop(32), bad, TV.ToTensor()])
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="boom in a user step"):
        warnings.simplefilter("ignore")
        list(fastcifar.DataLoader(ds, batch_size=8, num_workers=2))
