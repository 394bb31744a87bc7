"""channels_last: batches written in channels_last memory by the fused pass, the graph run on
channels_last activations with the user's `view` after a convolution still working, results equal
to float32 (N, C, H, W) within float32 rounding, and the eager fallback in the module's own layout."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from _internals import core, native_loader
from test_amp import Clamped, loader
from test_own_module import ImageClassifier, losses_of

import fastcifar
from fastcifar import transforms as T
from fastcifar.engine import capture

AUG = T.Compose(
    [T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)]
)


def test_the_fused_pass_writes_channels_last_batches_with_the_same_values():
    rng = np.random.default_rng(0)
    ds = fastcifar.Dataset.from_numpy(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 40))
    ld = fastcifar.DataLoader(ds, batch_size=16, shuffle=True, seed=1, transform=AUG)
    native = native_loader(ld)
    for (a, ya), (b, yb) in zip(native.epoch(2), native.channels_last().epoch(2)):
        assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert a.is_contiguous() and torch.equal(a, b) and torch.equal(ya, yb)


def test_the_seeds_view_after_a_convolution_works_and_matches_nchw_within_rounding():
    torch.manual_seed(0)
    a, b = ImageClassifier(), ImageClassifier()
    b.load_state_dict(a.state_dict())
    na, nb = capture.compile_module(a), capture.compile_module(b)
    nb.channels_last = True
    x = torch.randn(8, 3, 32, 32)
    ya, yb = na.forward(x, train=False), nb.forward(x, train=False)
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4)
    ya, yb = na.forward(x, train=True), nb.forward(x, train=True)  # dropout: same masks
    torch.manual_seed(3)
    ya = na.forward(x, train=True)
    torch.manual_seed(3)
    yb = nb.forward(x, train=True)
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4)
    ya.square().mean().backward()
    yb.square().mean().backward()
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=k)


def _eager_layout_noise(model: nn.Module, batches) -> dict:
    """How far eager PyTorch's own channels_last training drifts from its NCHW training on this CPU
    (other convolution kernels, other rounding): per tensor, the norm of the difference of the
    two runs' changes. oneDNN picks the kernels by CPU, so the drift is the machine's, not ours."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ends = []
    for cl in (False, True):
        m = type(model)()
        m.load_state_dict(start)
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        torch.manual_seed(1)
        for x, y in batches:
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
            # The seed's x.view(...) needs contiguous memory; reshape gives the same values.
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(torch.Tensor, "view", torch.Tensor.reshape)
                loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ends.append(m.state_dict())
    floats = [k for k in start if start[k].is_floating_point()]
    return {k: ((ends[1][k] - start[k]) - (ends[0][k] - start[k])).norm() for k in floats}


def test_training_in_channels_last_follows_nchw_training_within_rounding():
    torch.manual_seed(0)
    a, b = ImageClassifier(), ImageClassifier()
    b.load_state_dict(a.state_dict())
    start = {k: v.clone() for k, v in a.state_dict().items()}
    ta = fastcifar.Trainer(a, torch.optim.SGD(a.parameters(), lr=0.01), device="cpu", channels_last=False, log_every=1)
    tb = fastcifar.Trainer(b, torch.optim.SGD(b.parameters(), lr=0.01), device="cpu", channels_last=True, log_every=1)
    torch.manual_seed(1)
    la = losses_of(ta, loader(32))
    torch.manual_seed(1)
    lb = losses_of(tb, loader(32))
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    # Other kernels, other rounding: the two runs' changes agree to float32 noise, or to within
    # twice eager PyTorch's own NCHW-vs-channels_last drift where this CPU's kernels drift more.
    ref = ImageClassifier()
    ref.load_state_dict(start)
    noise = _eager_layout_noise(ref, loader(32))
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        if p.is_floating_point():
            dp, dq = p - start[k], q - start[k]
            assert (dq - dp).norm() <= max(1e-3 * dp.norm(), 2 * noise[k]) + 1e-7, k
        assert q.is_contiguous(), "the module's own tensors keep their layout"
    # the module still runs its own forward (with its view) on ordinary batches afterwards
    b.eval()
    b(torch.randn(2, 3, 32, 32))
    # and evaluate / predict agree
    ra, rb = ta.evaluate(loader(32), progress=False), tb.evaluate(loader(32), progress=False)
    assert abs(ra.loss - rb.loss) < 1e-3


def test_the_eager_fallback_keeps_the_modules_own_layout():
    class Viewing(Clamped):
        def forward(self, x):
            x = torch.nn.functional.max_pool2d(self.bn(self.conv(x)).clamp(min=0), 2)
            return self.fc(x.view(x.size(0), -1))  # fails on channels_last memory in eager PyTorch

    m = Viewing()
    with pytest.warns(UserWarning, match="eager PyTorch"):
        tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.01), device="cpu", channels_last=True)
    tr.fit(loader(32), epochs=1, progress=False)
    tr.evaluate(loader(32), progress=False)


def test_a_python_fed_batch_is_converted_for_a_channels_last_graph():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    tr = fastcifar.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.01), device="cpu", channels_last=True)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the once-only "through Python" notice
        h = tr.fit(dl, epochs=1, progress=False)
    assert np.isfinite(h[-1]["loss"])


def test_channels_last_is_automatic_with_bf16_and_refuses_other_values():
    tr = fastcifar.Trainer(ImageClassifier(), device="cpu")
    assert tr.channels_last is False
    if core().cpu_native_bf16() is not None:
        assert fastcifar.Trainer(ImageClassifier(), device="cpu", amp=True).channels_last is True
    with pytest.raises(TypeError, match="channels_last: expected True, False or None"):
        fastcifar.Trainer(ImageClassifier(), device="cpu", channels_last="yes")
