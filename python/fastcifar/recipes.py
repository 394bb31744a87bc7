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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["Airbench94", "ConvGroup", "whiten_init", "normalised", "airbench94", "Recipe", "AIRBENCH94", "RECIPES"]

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


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: must be a positive int, got {v!r}")
    return v


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
    from fastcifar import transforms as T

    if train is None or test is None:
        if root is None:
            from .cli import find_data

            root = find_data(None)
        train = train if train is not None else fastcifar.CIFAR10(root, train=True)
        test = test if test is not None else fastcifar.CIFAR10(root, train=False)
    for name, v in (("batch_size", batch_size), ("test_batch_size", test_batch_size), ("whiten_images", whiten_images)):
        _positive_int(name, v)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not epochs > 0:
        raise ValueError(f"epochs: must be a positive number, got {epochs!r}")
    if len(train) < batch_size:
        raise ValueError(
            f"batch_size: {batch_size} is more than the {len(train)} training images "
            "(airbench drops the last partial batch)"
        )
    torch.manual_seed(seed)
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

    whiten_bias = model.whiten.bias
    assert whiten_bias is not None  # Airbench94's whitening conv has a bias

    def freeze_whitening_bias(info):
        # airbench trains the whitening layer's bias for the first epochs only.
        if info.get("phase") == "epoch" and info["epoch"] >= whiten_bias_epochs:
            whiten_bias.requires_grad_(False)
        return True

    if whiten_bias_epochs == 0:
        whiten_bias.requires_grad_(False)
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
    return Recipe(
        model=model,
        trainer=trainer,
        train_loader=train_loader,
        test_loader=test_loader,
        epochs=math.ceil(epochs),
        max_steps=total_steps,
        tta=tta,
        callbacks=[freeze_whitening_bias],
        settings=settings,
    )


RECIPES: dict[str, Callable[..., Recipe]] = {"airbench94": airbench94}
