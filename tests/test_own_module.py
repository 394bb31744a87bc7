"""Your own nn.Module on the Rust engine: the seed's class as written, every supported operator
against eager PyTorch, residual networks, the eager fallback, 1-channel data, and bad input."""

import traceback

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _internals import is_graph, native_loader

import fastcifar
from fastcifar import _warn, models
from fastcifar import transforms as T
from fastcifar.engine import capture
from fastcifar.optim import SGD, Adam, lr_scheduler

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class ImageClassifier(nn.Module):
    """Copied verbatim from the seed tutorial (../shared/seed/)."""

    def __init__(self, num_classes=10):
        super().__init__()

        # First convolutional block
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool1 = nn.MaxPool2d(2, 2)

        # Second convolutional block
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.conv4 = nn.Conv2d(128, 128, kernel_size=3, padding=1)
        self.bn4 = nn.BatchNorm2d(128)
        self.pool2 = nn.MaxPool2d(2, 2)

        # Third convolutional block
        self.conv5 = nn.Conv2d(128, 256, kernel_size=3, padding=1)
        self.bn5 = nn.BatchNorm2d(256)
        self.conv6 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.bn6 = nn.BatchNorm2d(256)
        self.pool3 = nn.MaxPool2d(2, 2)

        # Fully connected layers
        self.fc1 = nn.Linear(256 * 4 * 4, 512)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(512, num_classes)

        self.relu = nn.ReLU()

    def forward(self, x):
        # Block 1
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.pool1(x)

        # Block 2
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.relu(self.bn4(self.conv4(x)))
        x = self.pool2(x)

        # Block 3
        x = self.relu(self.bn5(self.conv5(x)))
        x = self.relu(self.bn6(self.conv6(x)))
        x = self.pool3(x)

        # Flatten and fully connected layers
        x = x.view(x.size(0), -1)
        x = self.relu(self.fc1(x))
        x = self.dropout(x)
        x = self.fc2(x)

        return x


def synthetic(n=160, seed=0, classes=10, shape=(32, 32, 3)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    x[np.arange(n), :8, :8] = (
        (y * 25)[:, None, None] if len(shape) == 2 else (y * 25)[:, None, None, None]
    )  # a learnable cue
    return fastcifar.Dataset.from_numpy(x, y, classes=[f"c{i}" for i in range(classes)])


def losses_of(trainer, loader, epochs=1):
    out = []
    trainer.fit(
        loader,
        epochs=epochs,
        progress=False,
        callbacks=[lambda i: out.append(i["batch_loss"]) if i["phase"] == "step" else None],
    )
    return out


def plain_loop(model, opt, loader, epochs=1):
    """The seed's loop over the same batches."""
    crit, out = nn.CrossEntropyLoss(), []
    for e in range(epochs):
        model.train()
        for x, y in native_loader(loader).epoch(e):
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            out.append(loss.item())
    return out


def test_the_seed_class_trains_on_the_engine_bit_identically_to_the_seed_loop(tmp_path):
    loader = fastcifar.DataLoader(
        synthetic(160), batch_size=16, shuffle=True, seed=3, transform=T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    )
    torch.manual_seed(0)
    ours = ImageClassifier()
    theirs = ImageClassifier()
    theirs.load_state_dict(ours.state_dict())
    tr = fastcifar.Trainer(ours, optimizer=Adam(lr=1e-3, weight_decay=1e-4), device="cpu", log_every=1)
    assert is_graph(tr)
    torch.manual_seed(42)  # dropout masks come from torch's generator in both
    a = losses_of(tr, loader)
    torch.manual_seed(42)
    b = plain_loop(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-3, weight_decay=1e-4), loader)
    assert len(a) == 10 and a == b
    # The user's module itself holds the trained weights, under its own keys.
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    torch.save(ours.state_dict(), tmp_path / "best_model.pth")
    back = ImageClassifier()
    back.load_state_dict(torch.load(tmp_path / "best_model.pth", weights_only=True))
    x, _ = native_loader(loader).batch(list(range(8)), 0)
    back.eval(), ours.eval()
    with torch.no_grad():
        assert torch.equal(back(x), ours(x))
    assert torch.equal(tr.predict_logits(x), back(x))


class Everything(nn.Module):
    """Every supported operator: modules, their functional twins and tensor methods."""

    def __init__(self):
        super().__init__()
        self.same = nn.Conv2d(3, 8, 3, padding="same")
        self.dil = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.acts = nn.ModuleList(
            [
                nn.ReLU(),
                nn.ReLU6(inplace=True),
                nn.LeakyReLU(0.2),
                nn.GELU(),
                nn.SiLU(),
                nn.ELU(),
                nn.Hardswish(),
                nn.Tanh(),
                nn.Sigmoid(),
            ]
        )
        self.pools = nn.ModuleDict(
            {
                "max": nn.MaxPool2d(3, stride=1, padding=1),
                "avg": nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
            }
        )
        self.w = nn.Parameter(torch.randn(8, 8, 1, 1) * 0.3)
        self.register_buffer("rm", torch.zeros(8))
        self.register_buffer("rv", torch.ones(8))
        self.ln = nn.LayerNorm([16, 4, 4])
        self.drop, self.drop2 = nn.Dropout(0.2), nn.Dropout2d(0.2)
        self.aap, self.amp = nn.AdaptiveAvgPool2d((4, 4)), nn.AdaptiveMaxPool2d(4)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(256, 32)
        self.bn1d = nn.BatchNorm1d(32)
        self.head = nn.Sequential(nn.Identity(), nn.Linear(32, 10))
        self.soft = nn.Softmax(dim=1)
        self.lin_w = nn.Parameter(torch.randn(32, 32) * 0.1)

    def forward(self, x):
        x = self.gn(self.bn(self.dil(self.same(x))))
        for a in self.acts:
            x = a(x) + F.relu(x) * 0.1
        x = self.pools["max"](x) - self.pools["avg"](x) / 2
        x = F.conv2d(x, self.w, None, 1, 0)
        x = F.batch_norm(x, self.rm, self.rv, None, None, self.training, 0.1, 1e-5)
        x = F.relu6(F.leaky_relu(x, 0.05)) + F.gelu(x, approximate="tanh") + F.silu(x) + F.elu(x) + F.hardswish(x)
        x = torch.tanh(x) * torch.sigmoid(x) + F.softmax(x, dim=1) + torch.relu(x)
        x = torch.cat([self.aap(x), self.amp(x)], dim=1)
        x = F.max_pool2d(x, 1) + F.avg_pool2d(x, 1) + F.adaptive_avg_pool2d(x, (4, None)) - F.adaptive_max_pool2d(x, 4)
        x = self.drop2(self.ln(x))
        x = F.dropout2d(x, 0.1, self.training)
        b = x.shape[0]
        x = x.permute(0, 2, 3, 1).reshape(b, 4, 4, 16).permute(0, 3, 1, 2).contiguous()
        x = torch.flatten(x, 1) + x.flatten(1) * 0.5 - x.view(b, -1).mean(dim=1, keepdim=True)
        x = self.bn1d(self.drop(self.fc(self.flat(x.view(b, 16, 4, 4)))))
        x = F.layer_norm(x, (32,)) + F.group_norm(x.view(b, 32, 1), 4).view(b, 32) + F.linear(x, self.lin_w)
        x = F.dropout(x, 0.3, self.training) + 2 - x + 1 / (torch.sigmoid(x) + 1) - (-x) * 0.25
        return self.soft(self.head(x)) + F.log_softmax(self.head(x), dim=-1) + self.head(x).sum(dim=1, keepdim=True) * 0


def test_every_listed_operator_matches_eager_pytorch_forward_and_backward():
    torch.manual_seed(0)
    m = Everything()
    twin = Everything()
    twin.load_state_dict(m.state_dict())
    native = capture.compile_module(m)
    x = torch.randn(4, 3, 16, 16)
    for train in (True, False):
        m.train(train), twin.train(train)
        torch.manual_seed(7)
        a = native.forward(x, train=train)
        torch.manual_seed(7)
        b = twin(x)
        assert torch.equal(a, b), train
        if train:
            a.square().sum().backward()
            b.square().sum().backward()
            for (n, p), q in zip(m.named_parameters(), twin.parameters()):
                assert torch.equal(p.grad, q.grad), n
    for k, v in twin.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


def test_everything_is_on_the_graph_not_the_fallback(recwarn):
    assert capture.compile_module(Everything()).is_graph
    assert not [w for w in recwarn if "eager" in str(w.message)]


class Residual(nn.Module):
    def __init__(self, c=16, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(c, c, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(),
                    nn.Conv2d(c, c, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                )
                for _ in range(2)
            ]
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = F.relu(x + b(x))
        return self.fc(torch.cat([self.pool(x), F.adaptive_max_pool2d(x, 1)], 1).flatten(1))


def test_a_residual_network_trains_with_the_whole_engine_and_resumes(tmp_path):
    loader = fastcifar.DataLoader(
        synthetic(256), batch_size=16, shuffle=True, seed=0, transform=T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    )
    torch.manual_seed(0)
    net = Residual()
    tr = fastcifar.Trainer(
        net,
        optimizer=SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        device="cpu",
        scheduler=lr_scheduler.OneCycleLR(max_lr=0.1, total_steps=4 * 8),
        grad_accum_steps=2,
        grad_clip=5.0,
        label_smoothing=0.1,
    )
    h = tr.fit(loader, loader, epochs=4, progress=False, checkpoint=tmp_path / "ckpt.pth")
    assert h["loss"][-1] < h["loss"][0]
    rep = tr.evaluate(loader, progress=False)
    assert rep.accuracy > 0.3 and rep.count == 256
    # The class is importable (test_own_module:Residual, recorded at save time): no model= needed.
    imported = fastcifar.Trainer.load(tmp_path / "ckpt.ckpt.pth", device="cpu")
    assert type(imported.model) is Residual and imported.epoch == 4
    back = fastcifar.Trainer.load(tmp_path / "ckpt.ckpt.pth", model=Residual(), device="cpu")
    x, _ = native_loader(loader).batch(list(range(16)), 0)
    assert torch.equal(back.predict_logits(x), imported.predict_logits(x))
    assert set(torch.load(tmp_path / "ckpt.pth", weights_only=True)) == set(net.state_dict())  # best weights
    best = torch.load(tmp_path / "ckpt.ckpt.pth", weights_only=True)["model_state_dict"]  # the last epoch's
    assert set(best) == set(net.state_dict())
    assert torch.equal(back.predict_logits(x), fastcifar.Trainer(_loaded(best), device="cpu").predict_logits(x))


def _loaded(sd):
    m = Residual()
    m.load_state_dict(sd)
    return m


class Clamped(nn.Module):
    """Uses Tensor.clamp, which the graph does not cover: the eager fallback."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x).clamp(-1.0, 1.0)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        if x.mean() > 100:
            x = x * 0
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("cls,cause", [(Clamped, r"Tensor\.clamp"), (Branchy, "torch.fx cannot trace")])
def test_a_network_outside_the_graph_trains_in_eager_with_one_warning_naming_the_cause(cls, cause):
    loader = fastcifar.DataLoader(
        synthetic(64), batch_size=16, shuffle=True, seed=1, transform=T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    )
    torch.manual_seed(0)
    ours, theirs = cls(), cls()
    theirs.load_state_dict(ours.state_dict())
    _warn.forget()
    with pytest.warns(UserWarning, match=f"eager PyTorch because .*{cause}"):
        tr = fastcifar.Trainer(ours, optimizer=Adam(lr=1e-2), device="cpu", log_every=1)
    assert not is_graph(tr)
    a = losses_of(tr, loader, epochs=2)
    b = plain_loop(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-2), loader, epochs=2)
    assert a == b and a[-1] < a[0]
    assert tr.evaluate(loader, progress=False).count == 64
    with warnings_as_errors():  # once per class and cause
        fastcifar.Trainer(cls(), device="cpu")


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self.cm = warnings.catch_warnings()
        self.cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *a):
        self.cm.__exit__(*a)


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 10)

    def forward(self, x):
        return self.fc(undefined_name * x)  # noqa: F821  (eager cannot run this either)


def test_a_forward_that_even_eager_cannot_run_raises_its_own_error_with_its_line():
    loader = fastcifar.DataLoader(synthetic(32), batch_size=16, transform=T.ToTensor())
    with pytest.warns(UserWarning, match="eager PyTorch because torch.fx cannot trace"):
        tr = fastcifar.Trainer(Broken(), device="cpu")
    with pytest.raises(NameError, match="undefined_name") as e:
        tr.fit(loader, progress=False)
    assert any(
        f.name == "forward" and "undefined_name" in (f.line or "") for f in traceback.extract_tb(e.value.__traceback__)
    )


def gray_loader(n=256, shuffle=True):
    ds = synthetic(n, shape=(28, 28))
    return fastcifar.DataLoader(
        ds, batch_size=32, shuffle=shuffle, seed=0, transform=T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    )


class TinyGray(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize(
    "make", [lambda: models.small_cnn(10, width=16, in_channels=1), TinyGray], ids=["builtin", "own"]
)
def test_fashion_mnist_shaped_data_trains_with_one_channel(make):
    loader = gray_loader()
    x, y = next(iter(loader))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32
    torch.manual_seed(0)
    tr = fastcifar.Trainer(make(), optimizer=Adam(lr=1e-2), device="cpu")
    h = tr.fit(loader, epochs=6, progress=False)
    assert h["accuracy"][-1] > 0.3, h  # chance is 0.1: the cue is learnt
    assert tr.evaluate(gray_loader(shuffle=False), progress=False).accuracy > 0.3


def test_data_that_does_not_fit_the_network_is_named_by_fit():
    tr = fastcifar.Trainer(models.ImageClassifier(), device="cpu")
    with pytest.raises(ValueError, match=r"conv1 \(Conv2d\) expects 3 input channels, got 1"):
        tr.fit(gray_loader(), progress=False)
    tr = fastcifar.Trainer(models.ImageClassifier(in_channels=1), device="cpu")
    with pytest.raises(ValueError, match=r"fc1 \(Linear\) expects 4096 input features, got 2304"):
        tr.fit(gray_loader(), progress=False)


def test_the_trainer_follows_changes_to_the_module():
    torch.manual_seed(0)
    m = Residual()
    tr = fastcifar.Trainer(m, device="cpu")
    x = torch.randn(2, 3, 32, 32)
    before = tr.predict_logits(x)
    m.fc = nn.Linear(32, 10)  # a new head: the next call captures again
    after = tr.predict_logits(x)
    m.eval()
    with torch.no_grad():
        assert torch.equal(after, m(x)) and not torch.equal(before, after)
    m.blocks[0][2] = nn.GELU()  # a new activation, no new tensors
    with torch.no_grad():
        assert torch.equal(tr.predict_logits(x), m(x))


def test_module_hooks_run_because_a_hooked_module_runs_eagerly():
    torch.manual_seed(0)
    m = Residual()
    tr = fastcifar.Trainer(m, device="cpu")
    assert is_graph(tr)
    seen = []
    h = m.fc.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    with pytest.warns(UserWarning, match="fc has forward or backward hooks"):
        tr.predict_logits(torch.randn(2, 3, 32, 32))
    assert seen == [(2, 10)] and not is_graph(tr)
    h.remove()
    tr.predict_logits(torch.randn(2, 3, 32, 32))
    assert is_graph(tr) and len(seen) == 1


class _FrozenStem(nn.Module):
    """A forward with a `with torch.no_grad():` region: torch.fx would drop it from the graph."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        with torch.no_grad():
            y = self.stem(x)
        return self.head(y.mean((2, 3)))


class _AutocastHead(nn.Module):
    """A forward with its own `torch.autocast` region."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.head(x.flatten(1))
        return y.float()


@pytest.mark.parametrize(
    "cls, region", [(_FrozenStem, "torch.no_grad"), (_AutocastHead, "torch.autocast")], ids=["no_grad", "autocast"]
)
def test_a_region_fx_would_drop_runs_the_forward_eagerly_and_is_honoured(cls, region):
    _warn.forget()
    torch.manual_seed(0)
    model = cls()
    x = torch.randn(4, 3, 32, 32)
    with pytest.warns(UserWarning, match=f"enters {region}, a region torch.fx does not record"):
        tr = fastcifar.Trainer(model, SGD(lr=0.1), device="cpu")
    assert not is_graph(tr) and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(tr.predict_logits(x), model(x))  # the region in its dtype, as eager
    stem = [p.detach().clone() for p in model.parameters()]
    tr.fit(fastcifar.DataLoader(synthetic(32), batch_size=16, transform=T.ToTensor()), epochs=1, progress=False)
    if cls is _FrozenStem:  # no gradient reaches the stem, as in eager PyTorch
        assert torch.equal(model.stem.weight, stem[0]) and not torch.equal(model.head.weight, stem[2])
