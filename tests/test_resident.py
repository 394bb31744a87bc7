"""DataLoader(resident=True): the data set kept on the loader's device and batches built there
with tensor ops. Written device-agnostically, so the CPU device checks it here: under the same
(seed, epoch, index) draws its batches equal the Rust pass's, value for value."""

import numpy as np
import pytest
import torch
from _internals import native_loader

import fastcifar
from fastcifar import transforms as T

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def data(n=300, hw=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
    return fastcifar.Dataset.from_numpy(images, rng.integers(0, 10, n), classes=[str(i) for i in range(10)])


TRANSFORMS = {
    "seed-recipe": T.Compose(
        [T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)]
    ),
    "airbench": T.Compose(
        [
            T.AlternatingHorizontalFlip(),
            T.RandomCrop(32, padding=2, padding_mode="reflect"),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    ),
    "fill-edge-vflip": T.Compose(
        [
            T.RandomCrop(28, padding=3, fill=(10, 20, 30)),
            T.RandomVerticalFlip(),
            T.RandomCrop(30, padding=1, padding_mode="edge", fill=(10, 20, 30)),
            T.ToTensor(),
        ]
    ),
    "center-v2-scale": T.Compose([T.CenterCrop(24), T.ToImage(), T.ToDtype(torch.float32, scale=True)]),
    "none": None,
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_resident_batches_equal_the_rust_pass(name, dtype):
    ds = data()
    kw = dict(batch_size=64, shuffle=True, transform=TRANSFORMS[name], seed=11, dtype=dtype)
    host = fastcifar.DataLoader(ds, **kw)
    dev = fastcifar.DataLoader(ds, resident=True, **kw)
    assert dev.resident and native_loader(dev).is_resident and not host.resident
    for epoch in (0, 1, 2):
        pairs = list(zip(native_loader(host).epoch(epoch), native_loader(dev).epoch(epoch)))
        assert len(pairs) == len(host) == 5
        for (xa, ya), (xb, yb) in pairs:
            assert xb.dtype == dtype and xb.shape == xa.shape
            assert torch.equal(ya, yb)
            # The same draws and the same per-byte float values: identical batches.
            assert torch.equal(xa, xb), (name, epoch, (xa.float() - xb.float()).abs().max())
    # Explicit indices (a sampler's) too, and an index out of range is refused before the device sees it.
    torch.testing.assert_close(
        native_loader(dev).batch([5, 0, 299], 3), native_loader(host).batch([5, 0, 299], 3), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="index: 300 is out of range for 300 images"):
        native_loader(dev).batch([1, 300], 0)


def test_resident_follows_target_transform_and_shards():
    ds = data(100)
    ds.target_transform = lambda y: 9 - y
    dl = fastcifar.DataLoader(ds, batch_size=50, shuffle=True, seed=2, resident=True)
    _, y = next(iter(native_loader(dl).epoch(0)))
    assert torch.equal(y, torch.tensor([9 - ds.targets[i] for i in native_loader(dl).indices(0)[:50]]))
    assert dl.shard(0, 2).resident and len(dl.shard(1, 2)) == 1  # shards stay resident


def test_resident_falls_back_with_a_warning_for_what_it_cannot_apply():
    ds = data(64)
    for tf in (T.Compose([T.Resize(16), T.ToTensor()]), T.Compose([T.ToTensor(), T.RandomErasing(p=1.0)])):
        with pytest.warns(UserWarning, match="resident=True.*Resize, RandomResizedCrop, RandomErasing.*on the host"):
            dl = fastcifar.DataLoader(ds, batch_size=32, transform=tf, resident=True)
        assert not dl.resident
        x, _ = next(iter(dl))
        assert x.shape[0] == 32
    with pytest.raises(TypeError, match="resident need a fastcifar data set"):
        fastcifar.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 3)), resident=True)


def test_trainer_on_a_resident_loader_gives_the_same_training():
    ds = data(128)
    tf = TRANSFORMS["airbench"]

    def losses(resident):
        torch.manual_seed(0)
        model = fastcifar.models.small_cnn(10, width=4)
        tr = fastcifar.Trainer(model, optimizer=fastcifar.optim.SGD(lr=0.05, momentum=0.9), device="cpu", log_every=1)
        dl = fastcifar.DataLoader(ds, batch_size=32, shuffle=True, transform=tf, seed=5, resident=resident)
        out = []
        tr.fit(
            dl,
            epochs=2,
            progress=False,
            callbacks=[lambda i: out.append(i["batch_loss"]) if i["phase"] == "step" else None],
        )
        return out

    a, b = losses(False), losses(True)
    assert len(a) == 8 and a == b
