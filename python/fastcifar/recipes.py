"""Training recipes: a network, its optimizer, schedule, augmentation and evaluation, ready for
``fastcifar.Trainer``.

    recipe = fastcifar.recipes.airbench94(root="data")       # 94% on CIFAR-10 (airbench94's recipe)
    history, report = recipe.run()                            # fit, then evaluate with TTA
    # or by hand: recipe.trainer.fit(recipe.train_loader, epochs=recipe.epochs,
    #                                max_steps=recipe.max_steps, callbacks=recipe.callbacks)
    torch.save(recipe.model.state_dict(), "airbench94.pth")

``airbench94`` follows Keller Jordan's airbench94 (github.com/KellerJordan/cifar10-airbench, the
``airbench`` package's ``train94``): its network as an ordinary ``nn.Module`` (a 2x2 convolution
initialised from the whitening transform of image patches, three conv groups with BatchNorm as
airbench configures it, a scaled linear head), Nesterov SGD with airbench's decoupled learning rate
and weight decay (BatchNorm biases at 64 times the rate), label smoothing 0.2, the triangular
schedule, the lookahead average of the weights, the alternating flip and 2-pixel reflect
translation, and test-time augmentation (mirror and one-pixel translations). It runs on the Rust
engine like any module: the result is a normal fastcifar model, trainer and checkpoint. The
augmentation's randomness is the loader's (seed, epoch, index) contract rather than torch's
generator, and fp16 comes from autocast rather than a half-precision network.

``airbench94_muon`` follows the same repository's ``airbench94_muon.py`` (94.01% in 8 epochs at
batch 2000 there): the same network with a unit-variance head and logits divided by its width,
Muon on the convolution filters (``MuonSGD`` below: Nesterov momentum, the weights renormalised,
the update orthogonalised by a Newton-Schulz iteration), Nesterov SGD for the BatchNorm biases, the
whitening bias and the head, a linear decay of every rate to zero, and no lookahead.

    recipe = fastcifar.recipes.airbench94_muon(root="data")  # or: fastcifar train --recipe airbench94_muon
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.sgd import sgd as _sgd  # torch.optim.SGD's update, as a function (MuonSGD's SGD groups)

from ._args import whole

__all__ = [
    "Airbench94",
    "Airbench94Muon",
    "ConvGroup",
    "MuonSGD",
    "newton_schulz",
    "whiten_init",
    "normalised",
    "airbench94",
    "airbench94_muon",
    "Recipe",
    "AIRBENCH94",
    "AIRBENCH94_MUON",
    "RECIPES",
    "NETWORKS",
]

# airbench normalises with these (its standard deviations are per-pixel ones, not the seed's).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# airbench94's hyper-parameters, in its own units: lr and weight decay per 1024 examples of a summed
# loss, "decoupled" from momentum and batch size (converted in `airbench94`).
AIRBENCH94: dict[str, Any] = {
    "epochs": 9.9,
    "batch_size": 1024,
    "lr": 11.5,
    "momentum": 0.85,
    "weight_decay": 0.0153,
    "bias_scaler": 64.0,
    "label_smoothing": 0.2,
    "whiten_bias_epochs": 3,
    "translate": 2,
    "widths": (64, 256, 256),
    "whiten_kernel": 2,
    "bn_momentum": 0.6,
    "scale": 1 / 9,
    "tta": 2,
    "lookahead": {"every": 5, "decay": 0.95, "power": 3.0},
    "schedule": {"start": 0.2, "peak_at": 0.23, "end": 0.07},
    "whiten_images": 5000,
    "test_batch_size": 2000,
}

# airbench94_muon's hyper-parameters (airbench94_muon.py), in its units: the SGD rates and the weight
# decay are per example of a summed loss (converted to the Trainer's mean loss in `airbench94_muon`);
# Muon's rate is free of units, as its update is orthogonalised (its size does not follow the loss).
AIRBENCH94_MUON: dict[str, Any] = {
    # 8 epochs at twice airbench94's batch (25 steps an epoch, 200 in all) instead of 9.9 at 1024.
    "epochs": 8,
    "batch_size": 2000,
    # Muon on the 3x3 filters: a step of fixed size per filter matrix, so a rate near 0.24 of the
    # weights' norm (renormalised each step) rather than a rate tied to the gradient's scale.
    "filter_lr": 0.24,
    # Low momentum for Muon (with Nesterov; without it airbench measured 93.73%): the
    # orthogonalisation already evens out the step, so a long average only delays it.
    "filter_momentum": 0.6,
    # Three Newton-Schulz steps: enough to bring the singular values into roughly [0.5, 1.5],
    # which trains as well as an exact orthogonalisation (five steps cost more for nothing).
    "ns_steps": 3,
    # SGD for what is not a filter matrix: the BatchNorm biases and the whitening bias (0.053) and
    # the head (0.67, high as its weights start at unit variance and its logits are divided by 256).
    "bias_lr": 0.053,
    "head_lr": 0.67,
    "momentum": 0.85,
    # airbench's decay is 2e-6 times the batch size on the summed loss, for each SGD group relative
    # to its own rate (so the decay per step is the same in every group: 0.004 at batch 2000).
    "weight_decay": 2e-6,
    "label_smoothing": 0.2,
    # The whitening bias trains for the first 3 epochs, its rate falling linearly to zero by then.
    "whiten_bias_epochs": 3,
    "translate": 2,
    "widths": (64, 256, 256),
    "whiten_kernel": 2,
    "bn_momentum": 0.6,
    "tta": 2,
    "whiten_images": 5000,
    "test_batch_size": 2000,
}


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 'same' convolution without bias, its first c_in filters the identity (an implicit
    residual at initialisation, as airbench's Conv)."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


def _batchnorm(c: int, momentum: float) -> nn.BatchNorm2d:
    """airbench's BatchNorm: eps 1e-12, running averages that keep ``momentum`` of the old value
    (torch's momentum is the weight of the new one), the scale frozen at 1, the bias trained."""
    bn = nn.BatchNorm2d(c, eps=1e-12, momentum=1 - momentum)
    bn.weight.requires_grad_(False)
    return bn


class ConvGroup(nn.Module):
    """conv, 2x2 max-pool, BatchNorm, GELU, conv, BatchNorm, GELU."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float = 0.6):
        super().__init__()
        self.conv1 = _conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _batchnorm(c_out, bn_momentum)
        self.conv2 = _conv(c_out, c_out)
        self.norm2 = _batchnorm(c_out, bn_momentum)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class _Scale(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x):
        return x * self.scale


class Airbench94(nn.Sequential):
    """airbench94's network: a whitening convolution (kernel 2, 2 * 3 * 2 * 2 = 24 filters, frozen
    weights, trainable bias), GELU, three ConvGroups (64, 256, 256 wide), a 3x3 max-pool, and a
    bias-free linear head whose logits are scaled by 1/9. A ``nn.Sequential``, so its
    ``state_dict`` keys ("0.weight", "2.conv1.weight", ..., "7.weight") are the script's."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = AIRBENCH94["widths"],
        in_channels: int = 3,
        whiten_kernel: int = AIRBENCH94["whiten_kernel"],
        bn_momentum: float = AIRBENCH94["bn_momentum"],
        scale: float = AIRBENCH94["scale"],
    ):
        whiten_width = 2 * in_channels * whiten_kernel**2
        whiten = nn.Conv2d(in_channels, whiten_width, kernel_size=whiten_kernel, padding=0, bias=True)
        assert whiten.bias is not None  # made with bias=True
        with torch.no_grad():
            whiten.bias.zero_()
        whiten.weight.requires_grad_(False)
        w1, w2, w3 = widths
        super().__init__(
            whiten,
            nn.GELU(),
            ConvGroup(whiten_width, w1, bn_momentum),
            ConvGroup(w1, w2, bn_momentum),
            ConvGroup(w2, w3, bn_momentum),
            nn.MaxPool2d(3),
            nn.Flatten(),
            nn.Linear(w3, num_classes, bias=False),
            _Scale(scale),
        )

    @property
    def whiten(self) -> nn.Conv2d:
        conv = self[0]
        assert isinstance(conv, nn.Conv2d)  # the first layer, made in __init__
        return conv

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


class Airbench94Muon(Airbench94):
    """airbench94_muon's network: airbench94's, except the head. Its weights start at unit standard
    deviation (the default initialisation rescaled) and its logits are divided by its input width
    (256) instead of 9, which sets the scale its SGD rate (AIRBENCH94_MUON["head_lr"]) is tuned to.
    The same layers and ``state_dict`` keys as ``Airbench94``."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = AIRBENCH94_MUON["widths"],
        in_channels: int = 3,
        whiten_kernel: int = AIRBENCH94_MUON["whiten_kernel"],
        bn_momentum: float = AIRBENCH94_MUON["bn_momentum"],
    ):
        super().__init__(num_classes, widths, in_channels, whiten_kernel, bn_momentum, scale=1 / widths[-1])
        head = self[7]
        assert isinstance(head, nn.Linear)  # the head, made by Airbench94
        with torch.no_grad():
            head.weight.div_(head.weight.std())


def newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An approximate orthogonalisation of the matrix ``g`` (U V^T of its SVD U S V^T, up to singular
    values left in about [0.5, 1.5]) by ``steps`` of the quintic Newton-Schulz iteration
    X <- a X + (b A + c A^2) X, A = X X^T, with Muon's coefficients (3.4445, -4.7750, 2.0315), which
    push small singular values up fast rather than converging exactly. X starts as g over its
    Frobenius norm (so every singular value is at most 1), and is iterated on its wide orientation
    (A is the smaller Gram matrix). ``dtype``: of the iteration (default: g's); the result is g's."""
    if g.dim() != 2:
        raise ValueError(f"g: expected a matrix, got shape {tuple(g.shape)}")
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype or g.dtype)
    x = x / (x.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        # Two fused multiply-adds: b A + c A A, then a X + (b A + c A A) X.
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(g.dtype)


class MuonSGD(torch.optim.Optimizer):
    """Muon for the parameter groups marked ``muon=True`` and Nesterov SGD (torch.optim.SGD's update)
    for the others, in one optimizer (a Trainer takes one; it runs this one's own ``step()``).

    A Muon group's parameters are matrices or convolution filters (ndim >= 2; a filter bank is
    taken as the matrix of its output channels, (out, in * kh * kw)). Each step, per parameter:
    the momentum buffer b <- momentum * b + g; the update u = g + momentum * b (Nesterov) or b;
    with ``normalize``, the weights are first rescaled to Frobenius norm sqrt(out) (airbench's
    renormalisation, which makes the fixed-size step below a fixed fraction of the weights); then
    p <- p - lr * newton_schulz(u), reshaped back. No weight decay: the renormalisation holds the
    norm. ``torch.optim.Muon`` (torch >= 2.10) takes 2-D parameters only and has no
    renormalisation, hence this class. The iteration runs in ``ns_dtype``: bf16 by default (as
    airbench's and torch's), as it needs the singular values only roughly and bf16 matrix products
    are the fast ones on GPUs and on CPUs with bf16 units; None runs it in the parameters' dtype.

    SGD groups take ``lr``, ``momentum``, ``weight_decay``, ``nesterov`` (and run through
    ``torch.optim.sgd.sgd``, the functional form of torch.optim.SGD, so their update is torch's).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        muon: bool = False,
        ns_steps: int = 3,
        normalize: bool = True,
        ns_dtype: torch.dtype | None = torch.bfloat16,
    ):
        if not lr >= 0:
            raise ValueError(f"lr: {lr} must be >= 0")
        if not momentum >= 0:
            raise ValueError(f"momentum: {momentum} must be >= 0")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay: {weight_decay} must be >= 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            muon=muon,
            ns_steps=ns_steps,
            normalize=normalize,
            ns_dtype=ns_dtype,
        )
        super().__init__(params, defaults)
        for i, group in enumerate(self.param_groups):
            if group["nesterov"] and group["momentum"] <= 0:
                raise ValueError(f"param_groups[{i}]: nesterov needs momentum > 0")
            if not group["muon"]:
                continue
            if group["weight_decay"]:
                raise ValueError(f"param_groups[{i}]: a Muon group takes no weight_decay (normalize holds the norm)")
            if isinstance(group["ns_steps"], bool) or not isinstance(group["ns_steps"], int) or group["ns_steps"] < 1:
                raise ValueError(f"param_groups[{i}]: ns_steps must be a positive int, got {group['ns_steps']!r}")
            if group["ns_dtype"] is not None and not (
                isinstance(group["ns_dtype"], torch.dtype) and group["ns_dtype"].is_floating_point
            ):
                dt = group["ns_dtype"]
                raise ValueError(f"param_groups[{i}]: ns_dtype must be a floating torch.dtype or None, not {dt!r}")
            flat = [tuple(p.shape) for p in group["params"] if p.dim() < 2]
            if flat:
                raise ValueError(
                    f"param_groups[{i}]: Muon updates matrices and filters (ndim >= 2), got shapes {flat}; "
                    "put biases and other vectors in an SGD group (muon=False)"
                )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["muon"]:
                self._muon(group, params)
                continue
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            _sgd(
                params,
                [p.grad for p in params],
                bufs,
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=0.0,
                nesterov=group["nesterov"],
                maximize=False,
            )
            if group["momentum"]:
                for p, b in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = b
        return loss

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        m, lr = group["momentum"], group["lr"]
        for p in params:
            g = p.grad
            assert g is not None  # step() passes the parameters that have a gradient
            if m:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(m).add_(g)
                g = g.add(buf, alpha=m) if group["nesterov"] else buf
            if group["normalize"]:
                p.mul_(math.sqrt(p.shape[0]) / p.norm())
            update = newton_schulz(g.reshape(len(g), -1), group["ns_steps"], dtype=group["ns_dtype"])
            p.add_(update.reshape(p.shape), alpha=-lr)


@torch.no_grad()
def whiten_init(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4, chunk: int = 1000) -> None:
    """Sets ``conv``'s weights to the whitening transform of the k x k patches of ``images``
    (normalised float (N, C, H, W)): the eigenvectors of the patches' second-moment matrix, each
    divided by sqrt(eigenvalue + eps), largest eigenvalue first, then the same filters negated (the
    conv has 2 * C * k * k filters). Computed on the images' device; the moment matrix is
    accumulated in float64, ``chunk`` images at a time (5,000 images' patches at once would be over
    200 MB), and its eigenvectors found on the CPU (a d x d problem)."""
    c, (kh, kw) = conv.in_channels, conv.kernel_size
    d = c * kh * kw
    if conv.out_channels != 2 * d:
        raise ValueError(
            f"conv: needs 2 * {c} * {kh} * {kw} = {2 * d} output channels for the whitening filters and "
            f"their negatives, has {conv.out_channels}"
        )
    if images.dim() != 4 or images.shape[1] != c:
        raise ValueError(f"images: expected normalised (N, {c}, H, W) floats, got shape {tuple(images.shape)}")
    moment = torch.zeros(d, d, dtype=torch.float64, device=images.device)
    count = 0
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].float()
        # (n, C, H', W', kh, kw) views -> rows of C * kh * kw values, channel-major like the weights.
        p = x.unfold(2, kh, 1).unfold(3, kw, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, d).double()
        moment += p.T @ p
        count += p.shape[0]
    if count == 0:
        raise ValueError("images: no patches to estimate the whitening transform from")
    evals, evecs = torch.linalg.eigh((moment / count).cpu())  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)  # largest first
    filters = (evecs.T / torch.sqrt(evals.clamp_min(0) + eps)[:, None]).reshape(d, c, kh, kw)
    conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight))


def normalised(dataset, count: int, mean=CIFAR_MEAN, std=CIFAR_STD, device="cpu") -> torch.Tensor:
    """The first ``count`` images of a fastcifar data set as normalised float (N, C, H, W) on ``device``."""
    x = torch.tensor(dataset.data[:count]).to(device).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return (x - m) / s


@dataclass
class Recipe:
    """What a recipe gives: the model, a Trainer built for it, the loaders, and how to fit
    (``epochs``, ``max_steps``, ``callbacks``) and evaluate (``tta``). ``run()`` does both."""

    model: nn.Module
    trainer: Any
    train_loader: Any
    test_loader: Any
    epochs: int
    max_steps: int | None
    tta: int
    callbacks: list[Callable[[dict], bool | None]] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def run(self, progress: bool = False):
        """Fits, then evaluates on the test loader with the recipe's TTA. Returns (history, report)."""
        history = self.trainer.fit(
            self.train_loader, epochs=self.epochs, max_steps=self.max_steps, callbacks=self.callbacks, progress=progress
        )
        report = self.trainer.evaluate(self.test_loader, progress=False, tta=self.tta)
        return history, report


def _prepare(root, train, test, *, seed: int, epochs, batch_size: int, test_batch_size: int, whiten_images: int, **kw):
    """The recipe's data sets (CIFAR-10 under ``root`` unless given), once its sizes are checked,
    torch's seed, and its loaders (``_loaders``'s ``kw``): (train set, train loader, test loader,
    the resolved device, resident)."""
    import fastcifar

    if train is None or test is None:
        if root is None:
            from .cli import find_data

            root = find_data(None)
        train = train if train is not None else fastcifar.CIFAR10(root, train=True)
        test = test if test is not None else fastcifar.CIFAR10(root, train=False)
    for name, v in (("batch_size", batch_size), ("test_batch_size", test_batch_size), ("whiten_images", whiten_images)):
        whole(name, v, 1)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not epochs > 0:
        raise ValueError(f"epochs: must be a positive number, got {epochs!r}")
    if len(train) < batch_size:
        raise ValueError(
            f"batch_size: {batch_size} is more than the {len(train)} training images "
            "(airbench drops the last partial batch)"
        )
    torch.manual_seed(seed)
    loaders = _loaders(train, test, batch_size=batch_size, test_batch_size=test_batch_size, seed=seed, **kw)
    return (train, *loaders)


def _loaders(train, test, *, batch_size, test_batch_size, translate, alternating_flip, seed, device, resident):
    """airbench's augmentation (a flip, alternating or random, and a reflect-padded translation) in
    the training loader; (train loader, test loader, the resolved device, resident)."""
    import fastcifar
    from fastcifar import transforms as T

    flip = T.AlternatingHorizontalFlip() if alternating_flip else T.RandomHorizontalFlip()
    crop = [T.RandomCrop(32, padding=translate, padding_mode="reflect")] if translate else []
    tf_train = T.Compose([flip, *crop, T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    tf_test = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    device = fastcifar._native.resolve_device(device)
    on_cuda = device.startswith("cuda")
    # On CUDA the data sets live on the GPU and batches are built there (as airbench does).
    resident = on_cuda if resident is None else bool(resident)
    pin = on_cuda and not resident
    train_loader = fastcifar.DataLoader(
        train,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        transform=tf_train,
        seed=seed,
        device=device,
        pin_memory=pin,
        resident=resident,
    )
    test_loader = fastcifar.DataLoader(
        test, batch_size=test_batch_size, transform=tf_test, device=device, pin_memory=pin, resident=resident
    )
    return train_loader, test_loader, device, resident


def _whiten_bias_freeze(model: Airbench94, epochs: int) -> Callable[[dict], bool | None]:
    """airbench trains the whitening layer's bias for the first ``epochs`` epochs only: a fit
    callback that freezes it at the end of that epoch (now, for 0)."""
    whiten_bias = model.whiten.bias
    assert whiten_bias is not None  # Airbench94's whitening conv has a bias

    def freeze_whitening_bias(info):
        if info.get("phase") == "epoch" and info["epoch"] >= epochs:
            whiten_bias.requires_grad_(False)
        return True

    if epochs == 0:
        whiten_bias.requires_grad_(False)
    return freeze_whitening_bias


def _recipe(model, trainer, train_loader, test_loader, epochs, total_steps, tta, whiten_bias_epochs, settings):
    """The Recipe: fit for ceil(epochs) epochs, stopped after ``total_steps`` (fractional epochs),
    with the whitening bias frozen after its epochs."""
    return Recipe(
        model=model,
        trainer=trainer,
        train_loader=train_loader,
        test_loader=test_loader,
        epochs=math.ceil(epochs),
        max_steps=total_steps,
        tta=tta,
        callbacks=[_whiten_bias_freeze(model, whiten_bias_epochs)],
        settings=settings,
    )


def airbench94(
    root=None,
    *,
    train=None,
    test=None,
    device="auto",
    seed: int = 0,
    amp: bool | str = True,
    epochs: float = AIRBENCH94["epochs"],
    batch_size: int = AIRBENCH94["batch_size"],
    lr: float = AIRBENCH94["lr"],
    momentum: float = AIRBENCH94["momentum"],
    weight_decay: float = AIRBENCH94["weight_decay"],
    bias_scaler: float = AIRBENCH94["bias_scaler"],
    label_smoothing: float = AIRBENCH94["label_smoothing"],
    whiten_bias_epochs: int = AIRBENCH94["whiten_bias_epochs"],
    translate: int = AIRBENCH94["translate"],
    tta: int = AIRBENCH94["tta"],
    widths: Sequence[int] = AIRBENCH94["widths"],
    lookahead: bool = True,
    alternating_flip: bool = True,
    resident: bool | None = None,
    whiten_images: int = AIRBENCH94["whiten_images"],
    test_batch_size: int = AIRBENCH94["test_batch_size"],
    log_every: int = 100,
) -> Recipe:
    """airbench94's recipe as a model, a ``Trainer`` and loaders.

    ``root``: the CIFAR-10 folder (or pass fastcifar data sets as ``train`` / ``test``, e.g. subsets;
    the recipe's loaders apply its own transforms). Hyper-parameters are airbench's and in its units:
    ``lr`` and ``weight_decay`` per 1024 examples of a summed loss, with Nesterov momentum's step
    growth divided out. They are converted here to the Trainer's mean loss (rate times batch size,
    decay divided by it), which gives the same updates. ``epochs`` may be fractional: training stops
    after ceil(steps per epoch * epochs) optimizer steps. ``amp`` (the Trainer's) defaults to True: bf16
    autocast on GPUs that have it and on CPUs with native bf16, fp16 on older GPUs (airbench trains
    in fp16), float32 with a warning on a CPU without bf16. ``alternating_flip=False`` draws flips afresh each epoch
    instead of airbench's alternation. ``resident`` (default: on CUDA) keeps the data sets on the
    device and builds the batches there, as airbench does.
    """
    import fastcifar
    from fastcifar import optim

    train, train_loader, test_loader, device, resident = _prepare(
        root,
        train,
        test,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        test_batch_size=test_batch_size,
        whiten_images=whiten_images,
        translate=translate,
        alternating_flip=alternating_flip,
        device=device,
        resident=resident,
    )

    model = Airbench94(num_classes=len(train.classes) or 10, widths=widths)
    whiten_init(model.whiten, normalised(train, min(whiten_images, len(train)), device=device))

    total_steps = math.ceil(len(train_loader) * epochs)
    # airbench's units -> torch SGD on a summed loss -> the Trainer's mean loss (x batch size).
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    sgd_lr = lr / kilostep_scale
    sgd_wd = weight_decay * batch_size / kilostep_scale
    bias_lr = sgd_lr * bias_scaler
    norm_biases = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in model.named_parameters() if "norm" not in n and p.requires_grad]
    opt = optim.SGD(
        [
            {"params": norm_biases, "lr": bias_lr * batch_size, "weight_decay": sgd_wd / bias_lr / batch_size},
            {"params": others, "lr": sgd_lr * batch_size, "weight_decay": sgd_wd / sgd_lr / batch_size},
        ],
        lr=sgd_lr * batch_size,
        momentum=momentum,
        nesterov=True,
    )
    s = AIRBENCH94["schedule"]
    peak = int(s["peak_at"] * total_steps)
    # A run too short for a warm-up starts at the peak, as airbench's triangle does then.
    points = ([0, peak, total_steps], [s["start"], 1.0, s["end"]]) if peak > 0 else ([0, total_steps], [1.0, s["end"]])
    sched = optim.lr_scheduler.PiecewiseLinear(milestones=points[0], factors=points[1])
    la = optim.Lookahead(total_steps=total_steps, **AIRBENCH94["lookahead"]) if lookahead else None
    trainer = fastcifar.Trainer(
        model,
        optimizer=opt,
        scheduler=sched,
        label_smoothing=label_smoothing,
        device=device,
        amp=amp,
        log_every=log_every,
        lookahead=la,
    )

    settings = dict(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        bias_scaler=bias_scaler,
        label_smoothing=label_smoothing,
        whiten_bias_epochs=whiten_bias_epochs,
        translate=translate,
        tta=tta,
        widths=tuple(widths),
        lookahead=lookahead,
        alternating_flip=alternating_flip,
        resident=resident,
        total_steps=total_steps,
        amp=amp,
        device=device,
    )
    return _recipe(model, trainer, train_loader, test_loader, epochs, total_steps, tta, whiten_bias_epochs, settings)


_MUON = AIRBENCH94_MUON


def airbench94_muon(
    root=None,
    *,
    train=None,
    test=None,
    device="auto",
    seed: int = 0,
    amp: bool | str = True,
    epochs: float = _MUON["epochs"],
    batch_size: int = _MUON["batch_size"],
    filter_lr: float = _MUON["filter_lr"],
    filter_momentum: float = _MUON["filter_momentum"],
    ns_steps: int = _MUON["ns_steps"],
    bias_lr: float = _MUON["bias_lr"],
    head_lr: float = _MUON["head_lr"],
    momentum: float = _MUON["momentum"],
    weight_decay: float = _MUON["weight_decay"],
    label_smoothing: float = _MUON["label_smoothing"],
    whiten_bias_epochs: int = _MUON["whiten_bias_epochs"],
    translate: int = _MUON["translate"],
    tta: int = _MUON["tta"],
    widths: Sequence[int] = _MUON["widths"],
    alternating_flip: bool = True,
    resident: bool | None = None,
    whiten_images: int = _MUON["whiten_images"],
    test_batch_size: int = _MUON["test_batch_size"],
    log_every: int = 100,
) -> Recipe:
    """airbench94_muon's recipe as a model, a ``Trainer`` and loaders (see ``AIRBENCH94_MUON``).

    The optimizer is one ``MuonSGD``: Muon (``filter_lr``, ``filter_momentum``, Nesterov,
    ``ns_steps``) on the 3x3 convolution filters, Nesterov SGD (``momentum``) on the whitening bias
    and the BatchNorm biases (``bias_lr``) and on the head (``head_lr``). The SGD rates and
    ``weight_decay`` are airbench's, per example of a summed loss (its decay is ``weight_decay``
    times the batch size, relative to each group's rate); they are converted here to the
    Trainer's mean loss (rate times batch size, decay divided by it), which gives the same updates.
    Every rate falls linearly to zero over the run (a per-step ``LambdaLR``), the whitening bias's
    over its ``whiten_bias_epochs`` (then it is frozen). The Trainer runs ``MuonSGD.step()`` itself
    (it is not one of the engine's Rust updates). ``epochs``, ``amp``, ``alternating_flip`` and
    ``resident`` are as for ``airbench94``; there is no lookahead.
    """
    import fastcifar

    if whiten_bias_epochs < 0:
        raise ValueError(f"whiten_bias_epochs: must be >= 0, got {whiten_bias_epochs!r}")
    train, train_loader, test_loader, device, resident = _prepare(
        root,
        train,
        test,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        test_batch_size=test_batch_size,
        whiten_images=whiten_images,
        translate=translate,
        alternating_flip=alternating_flip,
        device=device,
        resident=resident,
    )
    model = Airbench94Muon(num_classes=len(train.classes) or 10, widths=widths)
    whiten_init(model.whiten, normalised(train, min(whiten_images, len(train)), device=device))

    total_steps = math.ceil(len(train_loader) * epochs)
    whiten_steps = math.ceil(len(train_loader) * whiten_bias_epochs)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    whiten_bias = model.whiten.bias
    filters = [p for _, p in named if p.dim() == 4]
    norm_biases = [p for n, p in named if "norm" in n]
    head = [p for _, p in named if p.dim() == 2]
    assert whiten_bias is not None and len(filters) + len(norm_biases) + len(head) + 1 == len(named)
    wd = weight_decay * batch_size  # airbench's decay on the summed loss

    def sgd_group(params, lr):
        # Summed loss -> mean loss: the rate times the batch size, the decay (wd / lr) divided by it.
        return {"params": params, "lr": lr * batch_size, "weight_decay": wd / lr / batch_size}

    opt = MuonSGD(
        [
            sgd_group([whiten_bias], bias_lr),
            sgd_group(norm_biases, bias_lr),
            sgd_group(head, head_lr),
            {"params": filters, "muon": True, "lr": filter_lr, "momentum": filter_momentum, "ns_steps": ns_steps},
        ],
        momentum=momentum,
        nesterov=True,
    )

    def whiten_decay(step: int) -> float:
        return max(0.0, 1 - step / whiten_steps) if whiten_steps else 0.0

    def decay(step: int) -> float:
        return max(0.0, 1 - step / total_steps)

    # Per step, each group's rate times its factor (airbench sets them before each step: step 0 is 1).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [whiten_decay, decay, decay, decay])
    trainer = fastcifar.Trainer(
        model,
        optimizer=opt,
        scheduler=sched,
        scheduler_interval="step",
        label_smoothing=label_smoothing,
        device=device,
        amp=amp,
        log_every=log_every,
    )
    settings = dict(
        epochs=epochs,
        batch_size=batch_size,
        filter_lr=filter_lr,
        filter_momentum=filter_momentum,
        ns_steps=ns_steps,
        bias_lr=bias_lr,
        head_lr=head_lr,
        momentum=momentum,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        whiten_bias_epochs=whiten_bias_epochs,
        translate=translate,
        tta=tta,
        widths=tuple(widths),
        alternating_flip=alternating_flip,
        resident=resident,
        total_steps=total_steps,
        whiten_steps=whiten_steps,
        amp=amp,
        device=device,
    )
    return _recipe(model, trainer, train_loader, test_loader, epochs, total_steps, tta, whiten_bias_epochs, settings)


#: The recipes by name (``fastcifar train --recipe NAME`` offers these).
RECIPES: dict[str, Callable[..., Recipe]] = {"airbench94": airbench94, "airbench94_muon": airbench94_muon}
#: The network class of each recipe (to rebuild a saved model: ``Trainer.load(path, model=...)``).
NETWORKS: dict[str, type[nn.Module]] = {"airbench94": Airbench94, "airbench94_muon": Airbench94Muon}
