"""The airbench94 recipe against plain PyTorch written here: its network, whitening init and TTA,
and the training pieces it needs (parameter groups, the triangular schedule, lookahead, a step
limit, the float32 optimizer path); then the whole recipe on a small CPU subset, side by side with
a plain PyTorch loop over the same batches, and `fastcifar train --recipe`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _internals import cudnn_benchmark, is_graph, native_loader, native_op, native_trainer, on_engine
from test_train import NORM, paired, step_losses, synthetic, torch_loop
from torch import nn

import fastcifar
from fastcifar import recipes
from fastcifar.optim import SGD, Adam, AdamW, Lookahead, lr_scheduler


# --- a plain PyTorch airbench94 network, written for the test ----------------------------------
class RefBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4)
        self.activ = nn.GELU()

    def forward(self, x):
        x = F.gelu(self.norm1(self.pool(self.conv1(x))))
        return F.gelu(self.norm2(self.conv2(x)))


class RefScale(nn.Module):
    def __init__(self, div=9):
        super().__init__()
        self.div = div

    def forward(self, x):
        return x / self.div


def ref_net(widths=(64, 256, 256), div=9):
    a, b, c = widths
    return nn.Sequential(
        nn.Conv2d(3, 24, 2),
        nn.GELU(),
        RefBlock(24, a),
        RefBlock(a, b),
        RefBlock(b, c),
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(c, 10, bias=False),
        RefScale(div),
    )


def randomise(model, seed=0):
    """Random values in every parameter and BatchNorm buffer (so the check covers them all)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                var = "running_var" in name
                t.copy_(torch.rand(t.shape, generator=g) * (0.5 if var else 0.2) + (0.75 if var else -0.1))


def same_logits(ours, ref):
    """With random values in every parameter and buffer: the same logits as the plain network in
    train and eval mode, and through the Rust engine (its fx graph) in eval mode."""
    randomise(ours)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(8, 3, 32, 32)
    for train in (False, True):
        ours.train(train), ref.train(train)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    tr = fastcifar.Trainer(ours, optimizer=SGD(lr=0.1), device="cpu")
    assert is_graph(tr)
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(tr.predict_logits(x), ref(x), rtol=1e-5, atol=1e-5)


def test_network_matches_the_plain_pytorch_one():
    ours, ref = recipes.Airbench94(), ref_net()
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters()) == 1_972_792
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    # airbench trains only the BatchNorm biases, the whitening bias, the convs and the head.
    frozen = sorted(n for n, p in ours.named_parameters() if not p.requires_grad)
    assert frozen == ["0.weight"] + sorted(f"{g}.norm{i}.weight" for g in (2, 3, 4) for i in (1, 2))
    assert ours[3].norm1.eps == 1e-12 and abs(ours[3].norm1.momentum - 0.4) < 1e-12
    # Identity-initialised 3x3 convs: the first c_in filters pass their channel through.
    w = ours[2].conv1.weight
    assert torch.equal(w[:24, :, 1, 1], torch.eye(24)) and w[:24].abs().sum() == 24
    same_logits(ours, ref)


def ref_whitening(images, k=2, eps=5e-4):
    """The whitening filters from the patch covariance, computed the direct way: one shifted copy
    of the images per offset in the k x k window."""
    n, c, h, w = images.shape
    shifted = [images[:, :, i : h - k + 1 + i, j : w - k + 1 + j] for i in range(k) for j in range(k)]
    patches = torch.stack(shifted, 2)  # n, c, k*k, h', w'
    patches = patches.permute(0, 3, 4, 1, 2).reshape(-1, c * k * k).double()
    cov = patches.T @ patches / len(patches)
    vals, vecs = torch.linalg.eigh(cov)
    order = torch.argsort(vals, descending=True)
    filt = (vecs[:, order] / torch.sqrt(vals[order] + eps)).T.reshape(-1, c, k, k)
    return torch.cat([filt, -filt]).float()


def test_whitening_init_matches_the_direct_computation(real_data):
    train = fastcifar.CIFAR10(real_data, train=True)
    x = recipes.normalised(train, 300)
    conv = nn.Conv2d(3, 24, 2)
    recipes.whiten_init(conv, x, chunk=64)  # chunked accumulation gives the same moment matrix
    ref = ref_whitening(x)
    ours = conv.weight.detach()
    # An eigenvector's sign is arbitrary: compare each filter up to sign.
    sign = torch.sign((ours * ref).flatten(1).sum(1)).view(-1, 1, 1, 1)
    torch.testing.assert_close(ours * sign, ref, rtol=1e-4, atol=1e-4)
    # The filters whiten: the responses to patches are decorrelated, variance lambda / (lambda + eps).
    out = F.conv2d(x, ours[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = out.T @ out / len(out)
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 1e-3 and (torch.diag(cov) < 1.0001).all() and torch.diag(cov)[0] > 0.99
    with pytest.raises(ValueError, match="needs 2 \\* 3 \\* 2 \\* 2 = 24 output channels"):
        recipes.whiten_init(nn.Conv2d(3, 12, 2), x)


def ref_tta(net, x):
    """airbench's level-2 TTA, written out: mirror, and one-pixel translations up-left and down-right."""

    def mirror(v):
        return (net(v) + net(torch.flip(v, dims=[3]))) / 2

    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return mirror(x) / 2 + (mirror(p[:, :, :32, :32]) + mirror(p[:, :, 2:, 2:])) / 4


def test_tta_levels_match_plain_pytorch():
    torch.manual_seed(0)
    model = recipes.Airbench94(widths=(16, 32, 32))
    with torch.no_grad():
        model[0].weight.normal_()
    ref = ref_net((16, 32, 32))
    ref.load_state_dict(model.state_dict())
    ref.eval()
    ds = synthetic(40)
    loader = fastcifar.DataLoader(ds, batch_size=16, transform=NORM)
    tr = fastcifar.Trainer(model, optimizer=SGD(lr=0.1), device="cpu")
    x = torch.cat([b[0] for b in native_loader(loader).epoch(0)])
    y = torch.tensor(ds.targets)
    with torch.no_grad():
        want = {0: ref(x), 1: (ref(x) + ref(x.flip(3))) / 2, 2: ref_tta(ref, x)}
    for level, logits in want.items():
        torch.testing.assert_close(tr.predict_logits(x, tta=level), logits, rtol=1e-5, atol=1e-5)
        rep = tr.evaluate(loader, progress=False, tta=level)
        assert rep.accuracy == pytest.approx((logits.argmax(1) == y).float().mean().item())
        assert rep.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert (want[2] - want[1]).abs().max() > 1e-3 * want[1].abs().max()  # the translations count
    torch.testing.assert_close(tr.predict_logits(x, tta=True), want[1], rtol=1e-5, atol=1e-5)
    # torch's own loader (batches pulled through Python) gets the same TTA.
    tl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    assert tr.evaluate(tl, progress=False, tta=2).accuracy == pytest.approx(rep.accuracy)
    for bad in (3, -1, "2", 1.0):
        with pytest.raises(ValueError, match="tta: .* is not 0 \\(none\\), 1 or True"):
            tr.evaluate(loader, progress=False, tta=bad)
    with pytest.raises(ValueError, match="tta: 3 is not 0"):
        tr.predict_logits(x, tta=3)


# --- training pieces --------------------------------------------------------------------------
def _split(model):
    """Biases, then the other parameters (two parameter groups)."""
    named = list(model.named_parameters())
    return [p for n, p in named if n.endswith("bias")], [p for n, p in named if not n.endswith("bias")]


def test_parameter_groups_match_torch_optim():
    loader, m, ref = paired(96, seed=4, width=8)
    a1, a2 = _split(m)
    b1, b2 = _split(ref)
    groups = [{"params": a1, "lr": 0.2, "weight_decay": 0.0}, {"params": a2, "weight_decay": 5e-3}]
    opt = SGD(groups, lr=0.05, momentum=0.8, nesterov=True)
    tr = fastcifar.Trainer(
        m, optimizer=opt, scheduler=lr_scheduler.StepLR(step_size=1, gamma=0.5), device="cpu", log_every=1
    )
    ours = step_losses(tr, loader, epochs=2)
    tgroups = [{"params": b1, "lr": 0.2, "weight_decay": 0.0}, {"params": b2, "weight_decay": 5e-3}]
    topt = torch.optim.SGD(tgroups, lr=0.05, momentum=0.8, nesterov=True)
    theirs, _ = torch_loop(ref, topt, loader, epochs=2, sched=torch.optim.lr_scheduler.StepLR(topt, 1, 0.5))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2 * 0.25, 0.05 * 0.25])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-3] and opt.lr == pytest.approx(0.05 * 0.25)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [g["params"] for g in tsd["param_groups"]]
    assert [g["lr"] for g in sd["param_groups"]] == pytest.approx([g["lr"] for g in tsd["param_groups"]])
    for i, s in tsd["state"].items():
        torch.testing.assert_close(sd["state"][i]["momentum_buffer"], s["momentum_buffer"], rtol=1e-4, atol=1e-6)
    # optimizer.lr moves every group, keeping its multiple (the next fit's first step uses it).
    opt.lr = 0.01
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.04, 0.01])
    used = []
    tr.fit(loader, epochs=1, progress=False, callbacks=[lambda i: used.append(i["lr"])])
    assert used[0] == pytest.approx(0.01)


def test_parameter_groups_refuse_what_they_cannot_honour():
    loader, m, _ = paired(32, seed=0, width=4)
    a1, a2 = _split(m)
    with pytest.raises(ValueError, match="group 0 sets \\['momentum'\\]; a group of fastcifar's optimizers sets only"):
        SGD([{"params": a1, "momentum": 0.5}], lr=0.1)
    with pytest.raises(TypeError, match="group 0 has no 'params'"):
        SGD([{"lr": 0.1}], lr=0.1)
    with pytest.raises(ValueError, match="more than one group"):
        SGD([{"params": a1}, {"params": a1}], lr=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        SGD([{"params": a1, "weight_decay": -1.0}], lr=0.1)
    with pytest.raises(ValueError, match="lr: 0 with parameter groups"):
        SGD([{"params": a1, "lr": 0.1}], lr=0.0)
    # A schedule that does not scale every group's rate by one factor would not give torch's rates.
    groups = [{"params": a1, "lr": 0.2}, {"params": a2}]
    for sched in (lr_scheduler.OneCycleLR(max_lr=0.1, total_steps=10), lr_scheduler.CosineAnnealingLR(3, 1e-4)):
        with pytest.raises(ValueError, match="does not scale every group's rate"):
            fastcifar.Trainer(m, optimizer=SGD(groups, lr=0.1), scheduler=sched, device="cpu")
    # Writes during a fit that the groups cannot follow are refused by name, not ignored.
    for key, value, match in (("lr", 0.5, "is not 2 times"), ("weight_decay", 0.1, "weight decay is fixed")):
        opt = SGD([{"params": a1, "lr": 0.2}, {"params": a2}], lr=0.1)
        tr = fastcifar.Trainer(m, optimizer=opt, device="cpu", log_every=1)

        def write(info, key=key, value=value, opt=opt):
            opt.param_groups[0][key] = value

        with pytest.raises(ValueError, match=f"param_groups\\[0\\]\\['{key}'\\]: .*{match}"):
            tr.fit(loader, epochs=1, progress=False, callbacks=[write])


def test_group_checkpoint_round_trip(tmp_path):
    loader, m, _ = paired(64, seed=5, width=4)
    a1, a2 = _split(m)
    opt = SGD([{"params": a1, "lr": 0.3}, {"params": a2, "weight_decay": 1e-3}], lr=0.05, momentum=0.9)
    tr = fastcifar.Trainer(m, optimizer=opt, device="cpu")
    tr.fit(loader, epochs=1, progress=False)
    tr.save(tmp_path / "c.pth")
    back = fastcifar.Trainer.load(tmp_path / "c.pth", device="cpu")
    pairs = [(g["lr"], g["weight_decay"], len(g["params"])) for g in back.optimizer.param_groups]
    assert pairs == [(pytest.approx(g["lr"]), g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    # Resuming continues exactly: the same next epoch as the trainer that never stopped.
    tr.fit(loader, epochs=1, progress=False)
    back.fit(loader, epochs=1, progress=False)
    for k, v in m.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v), k
    # A trainer whose groups differ refuses the checkpoint, naming them.
    other = SGD([{"params": a1, "lr": 0.1}, {"params": a2, "weight_decay": 1e-3}], lr=0.05, momentum=0.9)
    with pytest.raises(ValueError, match="groups="):
        fastcifar.Trainer(m, optimizer=other, device="cpu").load_checkpoint(tmp_path / "c.pth")


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (
            lambda: SGD(lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
        ),
        (
            lambda: SGD(lr=0.05, momentum=0.9, dampening=0.1),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1),
        ),
        (lambda: Adam(lr=3e-3, weight_decay=1e-4), lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-4)),
        (lambda: AdamW(lr=3e-3, weight_decay=0.05), lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.05)),
    ],
    ids=["nesterov-wd", "dampening", "adam", "adamw"],
)
def test_float32_update_path_matches_torch_optim(ours, theirs):
    """The CUDA path's arithmetic (plain float32 tensor ops), forced on CPU: torch.optim's
    trajectory within float32 rounding (the default CPU path is bit-exact, tests/test_train.py)."""
    loader, m, ref = paired(96, seed=1, width=8)
    tr = fastcifar.Trainer(m, optimizer=ours(), device="cpu", log_every=1)
    native_trainer(tr).set_fast_math(True)
    a = step_losses(tr, loader, epochs=2)
    b, _ = torch_loop(ref, theirs(ref.parameters()), loader, epochs=2)
    np.testing.assert_allclose(a, b, rtol=1e-4)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_piecewise_linear_matches_lambda_lr():
    loader, m, ref = paired(64, seed=2, width=4)
    total, peak = 12, 3
    sched = lr_scheduler.PiecewiseLinear(milestones=[0, peak, total], factors=[0.2, 1.0, 0.07])
    tr = fastcifar.Trainer(m, optimizer=SGD(lr=0.1, momentum=0.9), scheduler=sched, device="cpu", log_every=1)
    lrs = []
    tr.fit(
        loader, epochs=3, progress=False, callbacks=[lambda i: lrs.append(i["lr"]) if i["phase"] == "step" else None]
    )

    def f(s):
        return 0.2 + 0.8 * s / peak if s < peak else 1.0 + (0.07 - 1.0) * (s - peak) / (total - peak)

    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    _, ref_lrs = torch_loop(ref, opt, loader, epochs=3, sched=torch.optim.lr_scheduler.LambdaLR(opt, f), per_step=True)
    np.testing.assert_allclose(lrs, ref_lrs, rtol=1e-9)
    assert sched.milestones == [0, peak, total] and sched.factors == [0.2, 1.0, 0.07]
    with pytest.raises(ValueError, match="2 steps for 1 factors"):
        lr_scheduler.PiecewiseLinear(milestones=[0, 3], factors=[1.0])
    with pytest.raises(ValueError, match="milestones: must start at step 0 \\(PiecewiseLinear\\)"):
        lr_scheduler.PiecewiseLinear(milestones=[2, 5], factors=[1, 0])
    with pytest.raises(ValueError, match="milestones: must increase strictly"):
        lr_scheduler.PiecewiseLinear(milestones=[0, 5, 5], factors=[1, 0, 1])


@torch.no_grad()
def ref_lookahead(ema, state, rho):
    """The lookahead written out: the first call copies the state; later ones move the average
    towards the weights by 1 - rho and put it back into the weights."""
    if ema is None:
        return [t.clone() for t in state]
    for a, t in zip(ema, state):
        a.lerp_(t, 1 - rho)
        t.copy_(a)
    return ema


def test_lookahead_and_max_steps_match_a_plain_loop():
    """Lookahead every 3 steps over parameters and BatchNorm statistics, and a stop after 14 steps
    (mid-epoch 3), against the same written out in plain PyTorch."""
    loader, m, ref = paired(96, seed=6, width=8)  # 6 steps per epoch
    la = Lookahead(total_steps=14, every=3, decay=0.9, power=1.0)
    tr = fastcifar.Trainer(m, optimizer=SGD(lr=0.05, momentum=0.9), device="cpu", log_every=1, lookahead=la)
    h = tr.fit(loader, epochs=5, max_steps=14, progress=False)
    assert len(h) == 3 and tr.global_step == 14 and tr.epoch == 3 and h.interrupted is None

    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    ema, step = None, 0
    state = [t for t in ref.state_dict().values() if t.is_floating_point()]
    for e in range(3):
        ref.train()
        for x, y in native_loader(loader).epoch(e):
            opt.zero_grad()
            crit(ref(x), y).backward()
            opt.step()
            step += 1
            if step % 3 == 0:
                ema = ref_lookahead(ema, state, 0.9**3 * (step / 14) ** 1.0)
            if step == 14:
                with torch.no_grad():
                    for a, t in zip(ema, state):
                        t.copy_(a)  # the end of the run: the weights become the average
                break
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # Already there: a further fit with the same limit takes no step.
    assert len(tr.fit(loader, epochs=2, max_steps=14, progress=False)) == 3 and tr.global_step == 14
    with pytest.raises(ValueError, match="max_steps: must be a non-negative int or None"):
        tr.fit(loader, epochs=1, max_steps=-1, progress=False)
    with pytest.raises(ValueError, match="every: must be at least 1 \\(Lookahead\\)"):
        Lookahead(total_steps=10, every=0)
    with pytest.raises(ValueError, match="decay: 1.5 must be in \\[0, 1\\]"):
        Lookahead(total_steps=10, decay=1.5)


def test_lookahead_average_is_checkpointed_and_resume_is_exact(tmp_path):
    def trainer():
        loader, m, _ = paired(96, seed=6, width=8)
        la = Lookahead(total_steps=18, every=4, decay=0.9, power=1.0)
        return loader, fastcifar.Trainer(m, optimizer=SGD(lr=0.05, momentum=0.9), device="cpu", lookahead=la)

    loader, whole = trainer()
    whole.fit(loader, epochs=3, progress=False)
    loader, first = trainer()
    first.fit(loader, epochs=2, progress=False)
    ema = native_trainer(first).lookahead_state()
    assert ema is not None
    first.save(tmp_path / "c.pth")
    back = fastcifar.Trainer.load(tmp_path / "c.pth", device="cpu")
    assert back.lookahead.settings() == first.lookahead.settings()
    assert all(torch.equal(a, b) for a, b in zip(native_trainer(back).lookahead_state(), ema))
    back.fit(loader, epochs=1, progress=False)
    for k, v in whole.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v), k
    with pytest.raises(ValueError, match="do not match the model's"):
        native_trainer(back).load_lookahead_state(ema[:-1])


def test_alternating_flip_mirrors_each_image_in_one_of_two_epochs():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (400, 8, 8, 3), dtype=np.uint8)
    ds = fastcifar.Dataset.from_numpy(x, [0] * 400, classes=["a"])
    tf = fastcifar.transforms.AlternatingHorizontalFlip()
    plain = torch.from_numpy(x).permute(0, 3, 1, 2)

    def mirrored(seed, epoch):
        loader = fastcifar.DataLoader(ds, batch_size=400, transform=tf, seed=seed, dtype=torch.uint8)
        b = next(iter(native_loader(loader).epoch(epoch)))[0]
        same, flip = (b == plain).flatten(1).all(1), (b == plain.flip(3)).flatten(1).all(1)
        assert bool((same ^ flip).all())  # every image is either as it is or mirrored
        return flip

    e0, e1, e2 = mirrored(3, 0), mirrored(3, 1), mirrored(3, 2)
    assert bool((e0 ^ e1).all()) and torch.equal(e0, e2)  # alternates, and the coin stays
    assert 0.4 < e0.float().mean() < 0.6  # a fair coin (400 images: +-0.025)
    assert not torch.equal(e0, mirrored(4, 0))  # another seed, other coins
    # Evaluation repeats only the deterministic part; the transform pickles for spawn workers.
    assert fastcifar.transforms.to_config(fastcifar.transforms.deterministic_part(tf)) == [{"type": "ToTensor"}]
    import pickle

    assert pickle.loads(pickle.dumps(native_op(tf))).name == "AlternatingHorizontalFlip"


def test_cudnn_benchmark_is_the_users_after_fit():
    """On CUDA fit turns cuDNN's benchmark mode on for its passes; whatever it was is restored, on
    CPU untouched (and the context manager restores it on an error too)."""
    was = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with pytest.raises(RuntimeError, match="inside"):
            with cudnn_benchmark(True):
                assert torch.backends.cudnn.benchmark
                raise RuntimeError("inside")
        assert torch.backends.cudnn.benchmark is False
        loader, m, _ = paired(32, seed=0, width=4)
        seen = []
        tr = fastcifar.Trainer(m, optimizer=SGD(lr=0.01), device="cpu", log_every=1)
        tr.fit(loader, progress=False, callbacks=[lambda i: seen.append(torch.backends.cudnn.benchmark)])
        assert not any(seen) and torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = was


# --- the recipe -------------------------------------------------------------------------------
def test_recipe_settings_are_airbench_units(real_data):
    tr = fastcifar.CIFAR10(real_data, train=True).subset(range(2048))
    te = fastcifar.CIFAR10(real_data, train=False).subset(range(256))
    r = recipes.airbench94(train=tr, test=te, device="cpu", batch_size=512, epochs=2.5, widths=(8, 16, 16))
    assert len(r.train_loader) == 4 and r.max_steps == 10 and r.epochs == 3
    assert not r.train_loader.resident and r.trainer.config["amp"] == "auto"  # resident on CUDA only
    # airbench: SGD on a summed loss with lr = 11.5 / (1024 * (1 + 1 / 0.15)); on the mean loss, x batch size.
    lr = 11.5 / (1024 * (1 + 1 / 0.15))
    groups = r.trainer.optimizer.param_groups
    assert groups[0]["lr"] == pytest.approx(0.2 * 64 * lr * 512) and groups[1]["lr"] == pytest.approx(0.2 * lr * 512)
    wd = 0.0153 * 512 / (1024 * (1 + 1 / 0.15))
    # lr x weight decay is the same in both groups (airbench's decay per step, decoupled from the rate).
    assert groups[0]["lr"] * groups[0]["weight_decay"] == pytest.approx(groups[1]["lr"] * groups[1]["weight_decay"])
    assert groups[1]["weight_decay"] * 512 * lr == pytest.approx(wd)
    norm_bias = {id(p) for n, p in r.model.named_parameters() if "norm" in n and p.requires_grad}
    assert {id(p) for p in groups[0]["params"]} == norm_bias
    assert r.trainer.lookahead.settings() == {"total_steps": 10, "every": 5, "decay": 0.95, "power": 3.0}
    assert r.trainer.scheduler.milestones == [0, 2, 10] and r.trainer.scheduler.factors == [0.2, 1.0, 0.07]


def tiny_recipe(make, real_data):
    """A recipe on 256 CPU images, 8-16-16 wide, batch 32, 4.5 epochs (36 steps), float32 (as the
    plain loops that it is compared with), logging every step. (recipe, test set, widths, batch)."""
    te = fastcifar.CIFAR10(real_data, train=False).subset(range(256))
    widths, bs = (8, 16, 16), 32
    r = make(
        train=fastcifar.CIFAR10(real_data, train=True).subset(range(256)),
        test=te,
        device="cpu",
        batch_size=bs,
        epochs=4.5,
        widths=widths,
        test_batch_size=256,
        whiten_images=256,
        log_every=1,
        amp=False,
    )
    return r, te, widths, bs


def test_recipe_learns_side_by_side_with_a_plain_loop(real_data):
    """The whole recipe (groups, triangle schedule, label smoothing, lookahead, whitening bias
    freeze, alternating flip, step limit) on 256 CPU images, and the same written as a plain
    PyTorch loop over the same batches: the losses agree step by step within float noise, and
    both learn."""
    r, te, widths, bs = tiny_recipe(recipes.airbench94, real_data)
    ref = ref_net(widths)
    ref.load_state_dict(r.model.state_dict())
    ours = []
    r.callbacks.append(lambda i: ours.append(i["batch_loss"]) if i["phase"] == "step" else None)
    hist, rep = r.run()
    assert r.trainer.global_step == 36 and len(ours) == 36 and len(hist) == 5

    # The plain loop: airbench's optimizer, schedule and lookahead, on a summed loss.
    lr = 11.5 / (1024 * (1 + 1 / 0.15))
    wd = 0.0153 * bs / (1024 * (1 + 1 / 0.15))
    norm = [p for n, p in ref.named_parameters() if "norm" in n and n.endswith("bias")]
    other = [p for n, p in ref.named_parameters() if "norm" not in n and n != "0.weight"]
    groups = [
        {"params": norm, "lr": lr * 64, "weight_decay": wd / (lr * 64)},
        {"params": other, "lr": lr, "weight_decay": wd / lr},
    ]
    opt = torch.optim.SGD(groups, momentum=0.85, nesterov=True)
    total, peak = 36, int(0.23 * 36)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.2 + 0.8 * s / peak if s < peak else 1 + (0.07 - 1) * (s - peak) / (total - peak)
    )
    state = [t for t in ref.state_dict().values() if t.is_floating_point()]
    theirs, ema, step = [], None, 0
    for e in range(5):
        ref[0].bias.requires_grad_(e < 3)
        ref.train()
        for x, y in native_loader(r.train_loader).epoch(e):
            loss = F.cross_entropy(ref(x), y, label_smoothing=0.2, reduction="none").sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            theirs.append(loss.item() / len(y))
            step += 1
            if step % 5 == 0:
                ema = ref_lookahead(ema, state, 0.95**5 * (step / total) ** 3)
            if step == total:
                ref_lookahead(ema, state, 1.0)  # the weights become the average
                break
    print("largest relative loss difference", np.max(np.abs(np.array(ours) / np.array(theirs) - 1)))
    np.testing.assert_allclose(ours, theirs, rtol=5e-3)
    # The weights are not compared tightly: at these widths Muon is chaotic (the orthogonalisation
    # lifts the gradients' smallest singular directions), so a 1e-6 change of the plain loop's
    # initial weights alone moves its final filters by over 50%. Here they stay within 15%.
    mine = r.model.state_dict()
    drift = {k: ((mine[k] - v).norm() / v.norm()).item() for k, v in ref.state_dict().items() if v.is_floating_point()}
    print("largest relative weight difference", max(drift.items(), key=lambda kv: kv[1]))
    assert max(drift.values()) < 0.15, drift
    ref.eval()
    x = torch.cat([b[0] for b in native_loader(r.test_loader).epoch(0)])
    y = torch.tensor(te.targets)
    with torch.no_grad():
        ref_acc = (ref_tta(ref, x).argmax(1) == y).float().mean().item()
    assert abs(rep.accuracy - ref_acc) <= 0.03, (rep.accuracy, ref_acc)
    print("accuracy with TTA: ours", rep.accuracy, "plain loop", ref_acc, "epoch losses", hist["loss"])
    assert rep.accuracy > 0.12 and hist["loss"][-1] < hist["loss"][0]  # chance is 0.1 (+-0.02 on 256 images)


def test_cli_recipe_refuses_the_options_it_sets(tmp_path):
    from fastcifar import cli

    for extra, named in ((["--lr", "0.001"], "--lr"), (["--model", "resnet9", "--sync-bn"], "--model, --sync-bn")):
        with pytest.raises(SystemExit, match=f"fastcifar: {named}: not with --recipe airbench94"):
            cli.main(["train", "--recipe", "airbench94", "--data", str(tmp_path), *extra])


@pytest.mark.subprocess
def test_cli_trains_the_recipe(real_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--recipe", "airbench94", "--data", real_data, "--subset", "128", "--test-subset", "64"]
    args += ["--epochs", "1", "--batch-size", "64", "--device", "cpu", "--quiet", "--out", str(out)]
    r = subprocess.run([sys.executable, "-m", "fastcifar", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "airbench94: test accuracy" in r.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["count"] == 64 and report["tta"] == 2 and report["recipe"] == "airbench94"
    assert os.path.exists(out / "model_weights.pth")
    back = fastcifar.Trainer.load(out / "checkpoint.pth", device="cpu", model=recipes.Airbench94())
    assert back.global_step == 2 and back.lookahead.total_steps == 2
    lrs = [g["lr"] for g in back.optimizer.param_groups]
    assert lrs[0] == pytest.approx(64 * lrs[1])


# --- airbench94_muon ------------------------------------------------------------------------------
def test_muon_network_matches_the_plain_pytorch_one():
    torch.manual_seed(0)
    ours, ref = recipes.Airbench94Muon(), ref_net(div=256)  # airbench94_muon divides the logits by 256
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters()) == 1_972_792
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    frozen = sorted(n for n, p in ours.named_parameters() if not p.requires_grad)
    assert frozen == ["0.weight"] + sorted(f"{g}.norm{i}.weight" for g in (2, 3, 4) for i in (1, 2))
    # Its head starts at unit standard deviation (airbench94's at torch's default, about 0.036).
    assert abs(ours[7].weight.std().item() - 1) < 1e-5 and recipes.Airbench94()[7].weight.std() < 0.05
    w = ours[4].conv2.weight  # identity-initialised like airbench94's
    assert torch.equal(w[:, :, 1, 1][:, :256].diagonal(), torch.ones(256))
    same_logits(ours, ref)


def plain_newton_schulz(g, steps=3):
    """Muon's orthogonalisation written out: X = G / |G|_F, then X <- a X + b (X X^T) X + c (X X^T)^2 X
    on the wide orientation."""
    x = g / (g.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        s = x @ x.T
        x = 3.4445 * x - 4.7750 * (s @ x) + 2.0315 * (s @ s @ x)
    return x.T if tall else x


def plain_muon_step(p, g, buf, lr, m):
    """airbench's Muon, written out: buf <- m buf + g, u = g + m buf, rescale p to norm sqrt(out),
    then p <- p - lr NS(u as (out, -1))."""
    buf = m * buf + g
    u = g + m * buf
    p = p * (p.shape[0] ** 0.5 / p.norm())
    return p - lr * plain_newton_schulz(u.reshape(len(u), -1)).reshape(p.shape), buf


def test_newton_schulz_and_muon_step_match_plain_reimplementations():
    g = torch.Generator().manual_seed(0)
    for shape in ((6, 27), (10, 4)):  # wide and tall
        a = torch.randn(shape, generator=g, dtype=torch.float64)
        ours = recipes.newton_schulz(a)
        assert ours.dtype == torch.float64 and ours.shape == a.shape
        torch.testing.assert_close(ours, plain_newton_schulz(a), rtol=1e-10, atol=1e-12)
        # In bf16 (what MuonSGD runs): the same within bf16 rounding.
        torch.testing.assert_close(recipes.newton_schulz(a, dtype=torch.bfloat16), ours, rtol=0, atol=0.05)
        # It orthogonalises roughly: the singular values land near 1 (Muon's loose [0.5, 1.5]).
        sv = torch.linalg.svdvals(recipes.newton_schulz(a, steps=5))
        assert sv.min() > 0.5 and sv.max() < 1.5, sv
    with pytest.raises(ValueError, match="expected a matrix"):
        recipes.newton_schulz(torch.ones(3))

    # Two MuonSGD steps on a small conv filter bank against the plain step (float64 parameters).
    w0 = torch.randn(6, 3, 3, 3, generator=g, dtype=torch.float64)
    grads = [torch.randn(6, 3, 3, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    p = nn.Parameter(w0.clone())
    opt = recipes.MuonSGD([{"params": [p], "muon": True}], lr=0.1, momentum=0.6, nesterov=True)
    ref, buf = w0.clone(), torch.zeros_like(w0)
    for gr in grads:
        p.grad = gr.clone()
        opt.step()
        ref, buf = plain_muon_step(ref, gr, buf, 0.1, 0.6)
        # The orthogonalisation runs in bf16: the step (0.1 times unit-sized entries) within its rounding.
        torch.testing.assert_close(p.detach(), ref, rtol=0, atol=0.1 * 0.03)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=1e-12, atol=1e-12)
    assert (p.detach() - w0).abs().max() > 0.05  # it moved

    # Against torch.optim.Muon on a wide matrix, without the renormalisation: torch's momentum is
    # an average (1 - m) times airbench's sum, which the orthogonalisation's normalisation removes.
    a = torch.randn(8, 20, generator=g)
    q1, q2 = nn.Parameter(a.clone()), nn.Parameter(a.clone())
    ours = recipes.MuonSGD([{"params": [q1], "muon": True, "normalize": False}], lr=0.05, momentum=0.6, nesterov=True)
    theirs = torch.optim.Muon([q2], lr=0.05, momentum=0.6, nesterov=True, weight_decay=0.0, ns_steps=3)
    for _ in range(3):
        gr = torch.randn(8, 20, generator=g)
        q1.grad, q2.grad = gr.clone(), gr.clone()
        ours.step(), theirs.step()
    torch.testing.assert_close(q1.detach(), q2.detach(), rtol=0, atol=3 * 0.05 * 0.03)
    assert (q1.detach() - a).abs().max() > 0.02


def test_muon_sgd_groups_are_torch_sgd_and_bad_groups_are_refused():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, generator=g), torch.randn(3, 4, generator=g)
    ours = [nn.Parameter(a.clone()), nn.Parameter(b.clone())]
    theirs = [nn.Parameter(a.clone()), nn.Parameter(b.clone())]
    groups = lambda ps: [{"params": [ps[0]], "lr": 0.3, "weight_decay": 0.01}, {"params": [ps[1]], "lr": 0.1}]  # noqa: E731
    o = recipes.MuonSGD(groups(ours), momentum=0.85, nesterov=True)
    t = torch.optim.SGD(groups(theirs), momentum=0.85, nesterov=True)
    for _ in range(3):
        grads = [torch.randn(x.shape, generator=g) for x in ours]
        for x, y, gr in zip(ours, theirs, grads):
            x.grad, y.grad = gr.clone(), gr.clone()
        o.step(), t.step()
    for x, y in zip(ours, theirs):
        assert torch.equal(x, y)
        assert torch.equal(o.state[x]["momentum_buffer"], t.state[y]["momentum_buffer"])
    w = nn.Parameter(torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"Muon updates matrices and filters \(ndim >= 2\), got shapes \[\(5,\)\]"):
        recipes.MuonSGD([{"params": [nn.Parameter(torch.ones(5))], "muon": True}])
    with pytest.raises(ValueError, match="a Muon group takes no weight_decay"):
        recipes.MuonSGD([{"params": [w], "muon": True, "weight_decay": 0.1}])
    with pytest.raises(ValueError, match="ns_steps must be a positive int, got 0"):
        recipes.MuonSGD([{"params": [w], "muon": True, "ns_steps": 0}])
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        recipes.MuonSGD([w], nesterov=True)
    with pytest.raises(ValueError, match="ns_dtype must be a floating torch.dtype or None, not 'bf16'"):
        recipes.MuonSGD([{"params": [w], "muon": True, "ns_dtype": "bf16"}])
    with pytest.raises(ValueError, match="lr: -1 must be >= 0"):
        recipes.MuonSGD([w], lr=-1)


def test_muon_recipe_settings_are_airbench_units(real_data):
    tr = fastcifar.CIFAR10(real_data, train=True).subset(range(2048))
    te = fastcifar.CIFAR10(real_data, train=False).subset(range(256))
    r = recipes.airbench94_muon(train=tr, test=te, device="cpu", batch_size=512, epochs=2.5, widths=(8, 16, 16))
    assert len(r.train_loader) == 4 and r.max_steps == 10 and r.epochs == 3 and r.trainer.lookahead is None
    assert r.settings["whiten_steps"] == 12 and r.trainer.config["amp"] == "auto" and r.tta == 2
    assert not on_engine(r.trainer)  # MuonSGD runs its own step()
    whiten, norm, head, filt = r.trainer.optimizer.param_groups
    # airbench94_muon: SGD on a summed loss, rates 0.053 / 0.053 / 0.67, decay 2e-6 * batch over each rate.
    assert [whiten["lr"], norm["lr"], head["lr"]] == pytest.approx([0.053 * 512, 0.053 * 512, 0.67 * 512])
    for gr, lr in ((whiten, 0.053), (norm, 0.053), (head, 0.67)):
        assert gr["weight_decay"] == pytest.approx(2e-6 * 512 / lr / 512) and gr["momentum"] == 0.85
        assert gr["nesterov"] and not gr["muon"]
    assert filt["muon"] and filt["lr"] == 0.24 and filt["momentum"] == 0.6 and filt["ns_steps"] == 3
    named = dict(r.model.named_parameters())
    assert [id(p) for p in whiten["params"]] == [id(named["0.bias"])]
    assert {id(p) for p in norm["params"]} == {id(p) for n, p in named.items() if "norm" in n and p.requires_grad}
    assert [id(p) for p in head["params"]] == [id(named["7.weight"])]
    assert {id(p) for p in filt["params"]} == {id(p) for n, p in named.items() if "conv" in n}
    # Linear decay to zero: the whitening bias over its 3 epochs (12 steps), the rest over the run.
    sched = r.trainer.scheduler
    assert [f(6) for f in sched.lr_lambdas] == pytest.approx([0.5, 0.4, 0.4, 0.4])
    with pytest.raises(ValueError, match="batch_size: 4096 is more than the 2048 training images"):
        recipes.airbench94_muon(train=tr, test=te, device="cpu", batch_size=4096)
    with pytest.raises(ValueError, match="whiten_bias_epochs: must be >= 0, got -1"):
        recipes.airbench94_muon(train=tr, test=te, device="cpu", batch_size=512, whiten_bias_epochs=-1)
    assert set(recipes.RECIPES) == set(recipes.NETWORKS) == {"airbench94", "airbench94_muon"}


def test_muon_recipe_learns_side_by_side_with_a_plain_loop(real_data):
    """The Muon recipe (its groups, Muon on the filters, the per-group linear decays, label
    smoothing, the whitening bias freeze, alternating flip, step limit) on 256 CPU images, and the
    same as a plain PyTorch loop (torch.optim.SGD and the Muon written above) over the same
    batches: the losses agree step by step within the bf16 orthogonalisation's noise, and both learn."""
    r, te, widths, bs = tiny_recipe(recipes.airbench94_muon, real_data)
    ref = ref_net(widths, div=16)
    ref.load_state_dict(r.model.state_dict())
    # float32 orthogonalisation, as the plain loop's (bf16 rounding would make the runs drift apart).
    assert r.trainer.optimizer.param_groups[3]["ns_dtype"] == torch.bfloat16
    r.trainer.optimizer.param_groups[3]["ns_dtype"] = None
    ours = []
    r.callbacks.append(lambda i: ours.append(i["batch_loss"]) if i["phase"] == "step" else None)
    hist, rep = r.run()
    assert r.trainer.global_step == 36 and len(ours) == 36 and len(hist) == 5

    wd = 2e-6 * bs
    named = dict(ref.named_parameters())
    norm = [p for n, p in named.items() if "norm" in n and n.endswith("bias")]
    filters = [p for n, p in named.items() if "conv" in n]
    groups = [
        {"params": [named["0.bias"]], "lr": 0.053, "weight_decay": wd / 0.053},
        {"params": norm, "lr": 0.053, "weight_decay": wd / 0.053},
        {"params": [named["7.weight"]], "lr": 0.67, "weight_decay": wd / 0.67},
    ]
    opt = torch.optim.SGD(groups, momentum=0.85, nesterov=True)
    initial = [g["lr"] for g in groups]
    bufs = [torch.zeros_like(p) for p in filters]
    theirs, step, total, whiten_steps = [], 0, 36, 24
    for e in range(5):
        ref.train()
        for x, y in native_loader(r.train_loader).epoch(e):
            named["0.bias"].requires_grad_(step < whiten_steps)
            loss = F.cross_entropy(ref(x), y, label_smoothing=0.2, reduction="none").sum()
            opt.zero_grad(set_to_none=True)
            for p in filters:
                p.grad = None
            loss.backward()
            opt.param_groups[0]["lr"] = initial[0] * (1 - step / whiten_steps)
            for gr, lr in zip(opt.param_groups[1:], initial[1:]):
                gr["lr"] = lr * (1 - step / total)
            opt.step()
            with torch.no_grad():
                for i, p in enumerate(filters):
                    new, bufs[i] = plain_muon_step(p, p.grad, bufs[i], 0.24 * (1 - step / total), 0.6)
                    p.copy_(new)
            theirs.append(loss.item() / len(y))
            step += 1
            if step == total:
                break
    print("largest relative loss difference", np.max(np.abs(np.array(ours) / np.array(theirs) - 1)))
    np.testing.assert_allclose(ours, theirs, rtol=5e-3)
    # The weights are not compared tightly: at these widths Muon is chaotic (the orthogonalisation
    # lifts the gradients' smallest singular directions), so a 1e-6 change of the plain loop's
    # initial weights alone moves its final filters by over 50%. Here they stay within 15%.
    mine = r.model.state_dict()
    drift = {k: ((mine[k] - v).norm() / v.norm()).item() for k, v in ref.state_dict().items() if v.is_floating_point()}
    print("largest relative weight difference", max(drift.items(), key=lambda kv: kv[1]))
    assert max(drift.values()) < 0.15, drift
    assert np.mean(ours[-8:]) < 0.9 * np.mean(ours[:4]) and np.mean(theirs[-8:]) < 0.9 * np.mean(theirs[:4])
    ref.eval()
    x = torch.cat([b[0] for b in native_loader(r.test_loader).epoch(0)])
    y = torch.tensor(te.targets)
    with torch.no_grad():
        ref_acc = (ref_tta(ref, x).argmax(1) == y).float().mean().item()
    print("accuracy with TTA: ours", rep.accuracy, "plain loop", ref_acc, "epoch losses", hist["loss"])
    assert abs(rep.accuracy - ref_acc) <= 0.06, (rep.accuracy, ref_acc)
    assert rep.accuracy > 0.15 and hist["loss"][-1] < hist["loss"][0]  # chance is 0.1 (+-0.02 on 256 images)


@pytest.mark.subprocess
def test_cli_trains_the_muon_recipe(real_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--recipe", "airbench94_muon", "--data", real_data, "--subset", "128", "--test-subset", "64"]
    args += ["--epochs", "1", "--batch-size", "64", "--device", "cpu", "--quiet", "--out", str(out)]
    r = subprocess.run([sys.executable, "-m", "fastcifar", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "airbench94_muon: test accuracy" in r.stdout and "airbench94_muon(...).trainer.load_checkpoint" in r.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["count"] == 64 and report["tta"] == 2 and report["recipe"] == "airbench94_muon"
    # The checkpoint goes back into the recipe's own trainer (MuonSGD's momentum buffers included).
    tr = fastcifar.CIFAR10(real_data, train=True).subset(range(128))
    te = fastcifar.CIFAR10(real_data, train=False).subset(range(64))
    back = recipes.airbench94_muon(train=tr, test=te, device="cpu", batch_size=64, epochs=1)
    back.trainer.load_checkpoint(out / "checkpoint.pth")
    assert back.trainer.global_step == 2
    weights = torch.load(out / "model_weights.pth")
    for k, v in back.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    filt = back.trainer.optimizer.param_groups[3]["params"][0]
    assert back.trainer.optimizer.state[filt]["momentum_buffer"].abs().sum() > 0
    with pytest.raises(SystemExit, match="fastcifar: --lr: not with --recipe airbench94_muon"):
        from fastcifar import cli

        cli.main(["train", "--recipe", "airbench94_muon", "--data", str(tmp_path), "--lr", "0.1"])
