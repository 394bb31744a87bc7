"""Mixed precision on CPU: amp=True / "bf16" trains as torch's CPU autocast does (convolutions and
linears in bf16; loss, BatchNorm statistics, optimizer and master weights in float32), on the graph
engine and the eager fallback, in fit, evaluate, predict and TTA; float32 stays exact."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _internals import core, native_loader
from test_own_module import ImageClassifier, losses_of, plain_loop

import fastcifar
from fastcifar import models
from fastcifar import transforms as T
from fastcifar.engine import capture

needs_bf16 = pytest.mark.skipif(
    core().cpu_native_bf16() is None, reason="this CPU has no native bf16 (amp=True trains in float32)"
)
NORM = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])


def loader(n=64, bs=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[np.arange(n), :8, :8] = (y * 25)[:, None, None, None]
    ds = fastcifar.Dataset.from_numpy(x, y, classes=[f"c{i}" for i in range(10)])
    return fastcifar.DataLoader(ds, batch_size=bs, shuffle=True, seed=seed, transform=NORM)


class Clamped(nn.Module):
    """Runs on the eager fallback (Tensor.clamp is not a graph op)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x):
        x = F.max_pool2d(self.bn(self.conv(x)).clamp(min=0), 2)
        return self.fc(x.flatten(1))


def autocast_loop(model, opt, ld, epochs=1):
    """A plain PyTorch loop with torch's own CPU autocast, over the same batches."""
    crit, out = nn.CrossEntropyLoss(), []
    for e in range(epochs):
        model.train()
        for x, y in native_loader(ld).epoch(e):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            loss = crit(logits.float(), y)
            loss.backward()
            opt.step()
            out.append(loss.item())
    return out


@needs_bf16
@pytest.mark.parametrize("net", [ImageClassifier, Clamped], ids=["graph", "eager"])
def test_bf16_forward_and_backward_equal_torch_cpu_autocast(net):
    torch.manual_seed(0)
    ours, theirs = net(), net()
    theirs.load_state_dict(ours.state_dict())
    native = capture.compile_module(ours)
    assert native.is_graph == (net is ImageClassifier)
    native.precision = "bf16"
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(1)
    got = native.forward(x, train=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        want = theirs(x)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)
    got.float().square().mean().backward()
    want.float().square().mean().backward()
    for (k, p), q in zip(theirs.named_parameters(), ours.parameters()):
        assert q.grad.dtype == torch.float32, k  # master weights' gradients stay float32
        assert torch.equal(p.grad, q.grad), k
    for (k, p), q in zip(theirs.named_buffers(), ours.buffers()):
        assert p.dtype == q.dtype and torch.equal(p, q), k  # BatchNorm statistics, float32


@needs_bf16
@pytest.mark.parametrize("net", [ImageClassifier, Clamped], ids=["graph", "eager"])
def test_amp_fit_follows_a_plain_autocast_loop_with_float32_state(net):
    torch.manual_seed(0)
    ours, theirs = net(), net()
    theirs.load_state_dict(ours.state_dict())
    tr = fastcifar.Trainer(
        ours, torch.optim.Adam(ours.parameters(), lr=1e-3), device="cpu", amp=True, channels_last=False, log_every=1
    )
    assert tr.precision == "bf16"
    torch.manual_seed(1)  # the same dropout masks on both sides
    got = losses_of(tr, loader(), epochs=2)
    torch.manual_seed(1)
    want = autocast_loop(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-3), loader(), epochs=2)
    assert got == want
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), k
    for s in tr.optimizer.state.values():
        assert all(v.dtype == torch.float32 for v in s.values() if isinstance(v, torch.Tensor) and v.dim())
    assert not torch.is_autocast_enabled("cpu")


@needs_bf16
def test_evaluate_predict_and_tta_run_in_the_trainers_precision():
    torch.manual_seed(0)
    m = ImageClassifier()
    tr = fastcifar.Trainer(m, device="cpu", amp="bf16", channels_last=False)
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = m(x).float()
        want_tta = (m(x).float() + m(x.flip(3)).float()) / 2
    got = tr.predict_logits(x)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.allclose(tr.predict_logits(x, tta=True), want_tta, atol=1e-2)
    rep = tr.evaluate(loader(32), progress=False)
    assert np.isfinite(rep.loss)
    f32 = fastcifar.Trainer(m, device="cpu")
    assert not torch.equal(f32.predict_logits(x), got), "float32 is a different precision"


def test_amp_false_stays_bit_identical_to_the_float32_loop():
    torch.manual_seed(0)
    ours, theirs = ImageClassifier(), ImageClassifier()
    theirs.load_state_dict(ours.state_dict())
    tr = fastcifar.Trainer(ours, torch.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9), device="cpu", log_every=1)
    assert tr.precision == "float32"
    torch.manual_seed(1)
    got = losses_of(tr, loader())
    torch.manual_seed(1)
    want = plain_loop(theirs, torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9), loader())
    assert got == want


@needs_bf16
def test_checkpoints_cross_between_amp_and_float32(tmp_path):
    tr = fastcifar.Trainer(models.small_cnn(width=8), device="cpu", amp=True)
    tr.fit(loader(), epochs=1, progress=False)
    tr.save(tmp_path / "amp.pth")
    sd = torch.load(tmp_path / "amp.pth", weights_only=False)["model_state_dict"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in sd.values())
    f32 = fastcifar.Trainer(models.small_cnn(width=8), device="cpu")
    f32.load_state_dict(torch.load(tmp_path / "amp.pth", weights_only=False))
    f32.fit(loader(), epochs=1, progress=False)
    f32.save(tmp_path / "f32.pth")
    back = fastcifar.Trainer.load(tmp_path / "amp.pth", device="cpu")
    assert back.precision == "bf16" and back.epoch == 1
    amp = fastcifar.Trainer(models.small_cnn(width=8), device="cpu", amp="bf16")
    amp.load_state_dict(torch.load(tmp_path / "f32.pth", weights_only=False))
    amp.fit(loader(), epochs=1, progress=False)
    assert amp.epoch == 3


@pytest.mark.parametrize(
    "amp, exc, match",
    [
        ("fp16", ValueError, "'fp16' needs CUDA: CPUs have no fast float16"),
        (torch.float16, ValueError, "'fp16' needs CUDA"),
        ("fp8", ValueError, "amp: 'fp8' is not one of True, False, 'bf16', 'fp16'"),
        (torch.int8, ValueError, "amp: torch.int8 is not torch.bfloat16 or torch.float16"),
        (1.5, TypeError, "amp: expected True, False, 'bf16', 'fp16' or a torch dtype, got float"),
    ],
)
def test_amp_requests_a_cpu_cannot_honour_are_refused_by_name(amp, exc, match):
    with pytest.raises(exc, match=match):
        fastcifar.Trainer(models.small_cnn(width=4), device="cpu", amp=amp)


def test_amp_true_without_native_bf16_warns_naming_the_feature_and_trains_in_float32(monkeypatch):
    monkeypatch.setenv("FASTCIFAR_CPU_BF16", "0")
    with pytest.warns(UserWarning, match="neither avx512_bf16 nor amx_bf16"):
        tr = fastcifar.Trainer(models.small_cnn(width=4), device="cpu", amp=True)
    assert tr.precision == "float32"
    tr.fit(loader(32), epochs=1, progress=False)
    # an explicit request is honoured, slow or not
    assert fastcifar.Trainer(models.small_cnn(width=4), device="cpu", amp="bf16").precision == "bf16"


@needs_bf16
def test_a_callers_autocast_around_fit_is_honoured_and_said():
    torch.manual_seed(0)
    ours, theirs = models.small_cnn(width=8), models.small_cnn(width=8)
    theirs.load_state_dict(ours.state_dict())
    tr = fastcifar.Trainer(ours, torch.optim.SGD(ours.parameters(), lr=0.05), device="cpu", log_every=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.warns(UserWarning, match=r"runs in bfloat16 under the torch.autocast\('cpu'\).*amp='bfloat16'"):
            got = losses_of(tr, loader())
    # the same as amp='bf16': the forward under autocast, backward and update outside it
    want = autocast_loop(theirs, torch.optim.SGD(theirs.parameters(), lr=0.05), loader())
    assert got == want


# --- no host synchronisation inside a step ----------------------------------------------------------
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"grad_clip": 1.0, "label_smoothing": 0.1, "grad_accum_steps": 2},
        {"lookahead": True},
        {"amp": "bf16"},
    ],
    ids=["plain", "clip-smoothing-accum", "lookahead", "bf16"],
)
def test_the_engine_reads_values_back_only_where_a_metric_is_reported(opts):
    """On CUDA every read of a tensor value waits for the device: the count of the engine's reads
    (which runs on CPU too) must not grow with the number of steps between metric reports."""
    from fastcifar import models, optim

    def reads_for(steps):
        kw = dict(opts)
        if kw.pop("lookahead", False):
            kw["lookahead"] = optim.Lookahead(total_steps=steps, every=2)
        m = models.small_cnn(width=4)
        sched = optim.lr_scheduler.OneCycleLR(max_lr=0.01, total_steps=steps)
        tr = fastcifar.Trainer(m, optim.SGD(lr=0.01, momentum=0.9), sched, device="cpu", log_every=10_000, **kw)
        ld = loader(16 * steps, 16)
        before = core().host_reads()
        tr.fit(ld, epochs=1, progress=False)
        return core().host_reads() - before

    assert reads_for(4) == reads_for(12) > 0
    m = models.small_cnn(width=4)
    tr = fastcifar.Trainer(m, device="cpu", log_every=1)
    before = core().host_reads()
    tr.fit(loader(16 * 6, 16), epochs=1, progress=False)
    assert core().host_reads() - before >= 6 * 3, "each metric report reads loss, accuracy, batch loss"
