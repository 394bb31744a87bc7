"""Type stubs for fastcifar's Rust extension (``fastcifar._native``)."""

from collections.abc import Iterable, Iterator, Sequence
from os import PathLike
from typing import Any, Callable, Literal, final

import numpy as np
import torch

__version__: str

__all__ = [
    "__version__",
    "NativeDataset",
    "CifarFiles",
    "TransformOp",
    "NativeLoader",
    "BatchIter",
    "DeviceError",
    "DecompressionBombError",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "cuda_is_available",
    "resolve_device",
    "resolve_amp",
    "cpu_native_bf16",
    "decode_images",
    "load_idx",
    "load_svhn",
    "NativeModel",
    "graph_ops",
    "save_safetensors",
    "load_safetensors",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "LookaheadConfig",
    "defaults",
    "NativeTrainer",
    "TrainHooks",
    "EpochStats",
    "OptimizerState",
    "EvalStats",
    "evaluate",
    "evaluate_batches",
    "predict_logits",
    "host_reads",
]

@final
class NativeDataset:
    """A data set held in Rust: one uint8 (N, C, H, W) buffer, labels and class names."""

    @staticmethod
    def cifar(
        root: str | PathLike, variant: str, train: bool, *, label: str = "fine", mmap: bool = False
    ) -> CifarFiles:
        """Loads CIFAR-10 (``"cifar10"``) or CIFAR-100 (``"cifar100"``, label ``"fine"``/``"coarse"``).
        ``mmap``: keep an extracted pickle folder's images in the page cache instead of copying them."""
    @staticmethod
    def image_folder(
        root: str | PathLike, size: tuple[int, int] | None = None, *, max_pixels: int | None = ...
    ) -> NativeDataset:
        """An image folder; images of more than ``max_pixels`` pixels are refused (None: no limit)."""
    @staticmethod
    def from_numpy(images: np.ndarray, labels: Sequence[int], classes: Sequence[str]) -> NativeDataset:
        """From a C-contiguous uint8 (N, H, W, C) array."""
    def __len__(self) -> int: ...
    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
    @property
    def mapped(self) -> bool:
        """Whether the images are the files' own pages (``mmap=True``) rather than a copy."""
    @property
    def classes(self) -> list[str]: ...
    @property
    def targets(self) -> np.ndarray:
        """int64 labels (a copy)."""
    def class_counts(self) -> list[int]: ...
    def buffer(self) -> np.ndarray:
        """The flat uint8 image buffer, read-only, borrowing this object's memory."""
    def select(self, indices: Sequence[int]) -> NativeDataset: ...

@final
class CifarFiles:
    """What ``NativeDataset.cifar`` found."""

    @property
    def dataset(self) -> NativeDataset: ...
    @property
    def layout(self) -> str:
        """ "python", "binary", "python-archive" or "binary-archive"."""
    @property
    def path(self) -> str:
        """The folder or archive read."""

@final
class TransformOp:
    """One transform step, checked by the core when it is made (built by fastcifar.transforms).
    Sizes are (h, w); paddings (left, top, right, bottom); fills pixel values in [0, 255]."""

    @staticmethod
    def random_crop(
        *, size: tuple[int, int], padding: Sequence[int], fill: Sequence[float], padding_mode: str, pad_if_needed: bool
    ) -> TransformOp:
        """Pads, then crops ``size`` at a uniform offset; padding_mode 'constant', 'edge', 'reflect' or 'symmetric'."""
    @staticmethod
    def center_crop(*, size: tuple[int, int]) -> TransformOp: ...
    @staticmethod
    def pad(*, padding: Sequence[int], fill: Sequence[float], padding_mode: str) -> TransformOp:
        """Pads by (left, top, right, bottom); padding_mode 'constant', 'edge', 'reflect' or 'symmetric'."""
    @staticmethod
    def random_resized_crop(
        *, size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float]
    ) -> TransformOp:
        """torchvision's RandomResizedCrop, bilinear with Pillow's pixels."""
    @staticmethod
    def horizontal_flip(*, p: float) -> TransformOp: ...
    @staticmethod
    def vertical_flip(*, p: float) -> TransformOp: ...
    @staticmethod
    def alternating_horizontal_flip() -> TransformOp:
        """airbench's alternating flip: one coin per image for the run, mirrored when it and the
        epoch's parity disagree."""
    @staticmethod
    def resize(*, shorter: int | None = None, exact: tuple[int, int] | None = None) -> TransformOp:
        """``shorter``: the shorter side becomes this (keeping the aspect ratio); ``exact``: (h, w)."""
    @staticmethod
    def to_tensor() -> TransformOp: ...
    @staticmethod
    def to_dtype_scaled() -> TransformOp:
        """transforms.v2's ToImage + ToDtype(torch.float32, scale=True): x * float32(1 / 255)."""
    @staticmethod
    def normalize(*, mean: Sequence[float], std: Sequence[float]) -> TransformOp: ...
    @staticmethod
    def random_erasing(
        *, p: float, scale: tuple[float, float], ratio: tuple[float, float], value: Sequence[float]
    ) -> TransformOp: ...
    @staticmethod
    def cutout(*, size: int, p: float, value: Sequence[float]) -> TransformOp: ...
    @property
    def name(self) -> str:
        """The transform's torchvision name ("RandomCrop", "ToTensor", ...)."""

@final
class BatchIter(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """One epoch of batches; a background thread builds them. Dropping it stops that thread."""

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def __len__(self) -> int: ...
    def set_timeout(self, *, seconds: float) -> None:
        """Waiting longer than this for a batch raises (torch's DataLoader timeout); 0: no limit."""
    def close(self) -> None: ...

_Device = str | torch.device | int | None

@final
class NativeLoader:
    def __new__(
        cls,
        dataset: NativeDataset,
        ops: Sequence[TransformOp],
        *,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        prefetch: int = 2,
        dtype: str = "float32",
        device: _Device = None,
        pin_memory: bool = False,
        num_threads: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad_shards: bool = True,
        labels: Sequence[int] | None = None,
    ) -> NativeLoader:
        """``dtype``: "float32" or "uint8" (also "torch.float32" / "torch.uint8"). ``device``: as
        ``resolve_device`` takes it (None: torch's default device). ``labels``: emitted instead of the
        data set's (its target_transform applied), one per image. ``pin_memory`` on a CPU device pins
        the batches when CUDA exists. The core checks every value and names the one at fault."""
    def __len__(self) -> int: ...
    @property
    def out_shape(self) -> tuple[int, int, int]: ...
    def indices(self, epoch: int) -> list[int]: ...
    def batch(self, indices: Sequence[int], epoch: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def epoch(self, epoch: int) -> BatchIter: ...
    def epoch_batches(self, *, epoch: int, batches: Sequence[Sequence[int]]) -> BatchIter:
        """These batches of data set indices (a sampler's), with the randomness of ``epoch``."""
    def channels_last(self, on: bool = True) -> NativeLoader:
        """The same loader with batches in channels_last memory (or not): the same values."""
    def resident(self) -> NativeLoader:
        """The same loader with the data set on its output device and batches built there (the same
        batches). ValueError when the transform has steps the device path lacks."""
    @property
    def is_resident(self) -> bool: ...

def cuda_is_available() -> bool: ...

class DeviceError(ValueError, RuntimeError):
    """A device fastcifar does not know: a ValueError, and a RuntimeError as ``torch.device`` raises."""

class DecompressionBombError(ValueError):
    """A file declares more than its kind may hold: an image of more pixels than
    fastcifar.datasets.MAX_IMAGE_PIXELS (as PIL's DecompressionBombError), or an archive member larger
    than any CIFAR batch. A ValueError."""

DEFAULT_MAX_IMAGE_PIXELS: int

def resolve_device(device: _Device) -> str:
    """ "cpu", "cuda" or "cuda:N" for 'cpu', 'cuda', 'cuda:N', 'auto' (CUDA when present), an int N,
    a torch.device, or None (torch's default device). Raises ``DeviceError`` for another device,
    RuntimeError when CUDA is asked for but absent, ValueError for a CUDA index that does not exist."""

def resolve_amp(amp: str, device: _Device, *, cuda_bf16: bool = False) -> tuple[str, str | None]:
    """The precision ("float32", "bf16" or "fp16") that ``amp`` ("off", "auto", "bf16", "fp16") gives
    on ``device`` (``cuda_bf16``: the GPU has bfloat16), and a note to warn with when "auto" falls back
    to float32. Raises ValueError for what the device cannot honour (fp16 on a CPU)."""

def cpu_native_bf16() -> str | None:
    """ "amx_bf16" or "avx512_bf16" when this CPU computes bf16 natively (libtorch's cpuinfo), else None
    (also when FASTCIFAR_CPU_BF16=0)."""

def decode_images(
    paths: Sequence[str | PathLike], size: tuple[int, int], *, max_pixels: int | None = ...
) -> np.ndarray:
    """Decodes PNG / JPEG files to uint8 (N, H, W, 3), resized (bilinear) to size = (h, w); images of
    more than ``max_pixels`` pixels are refused (None: no limit)."""

def load_idx(root: str | PathLike, folder: str, train: bool, classes: Sequence[str]) -> tuple[NativeDataset, str]:
    """One split of an MNIST-style IDX data set (``root/<folder>/raw/`` or the files in ``root``,
    plain or gzipped), and the folder read."""

def load_svhn(root: str | PathLike, file: str, classes: Sequence[str]) -> tuple[NativeDataset, str]:
    """SVHN's ``root/<file>`` (a level-5 MAT-file, compressed or not), and the path read."""

# A node argument: ("x", 0) the input, ("v", i) node i, ("p", i) tensor i, a constant, or a list.
ProgramRef = tuple[Literal["x", "v", "p"], int]
ProgramArg = ProgramRef | bool | int | float | str | None | list["ProgramArg"]
# One program: [(op, args, name), ...] and its output; each op's args as graph_ops() lays them out.
Program = tuple[list[tuple[str, list[ProgramArg], str]], ProgramArg]

def graph_ops() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every canonical op's arguments by name and kind, ``[(op, [(name, kind), ...]), ...]``: the
    layout of a program's nodes, defined once in the core (``src/nn/graph.rs``)."""

@final
class NativeModel:
    """An nn.Module on the Rust engine: graphs over the module's own tensors, or its own forward."""

    @staticmethod
    def graph(
        name: str, names: Sequence[str], tensors: Sequence[torch.Tensor], *, train: Program, eval: Program
    ) -> NativeModel:
        """Runs the train / eval programs (fastcifar.engine.capture) over ``tensors`` (shared).
        ValueError ``graph: node i (name, op): ...`` for a node that does not fit its op's layout."""
    @staticmethod
    def eager(
        name: str,
        names: Sequence[str],
        tensors: Sequence[torch.Tensor],
        *,
        forward: Callable[[torch.Tensor, bool], torch.Tensor],
    ) -> NativeModel:
        """Calls ``forward(x, train)`` (eager PyTorch) for the logits."""
    def rebind(self, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
        """Takes the module's current tensors (same names, same order)."""
    def forward(self, x: torch.Tensor, *, train: bool | None = None) -> torch.Tensor: ...
    def set_sync_bn(self, func: Callable[..., torch.Tensor] | None = None) -> None:
        """SyncBatchNorm: func(x, weight, bias, running_mean, running_var, momentum, eps) -> y in training mode."""
    @property
    def device(self) -> str: ...
    @property
    def is_graph(self) -> bool: ...
    training: bool
    #: "float32", "bf16" or "fp16": the autocast dtype of every forward.
    precision: str
    #: The graph runs on channels_last activations (the loader writes batches so).
    channels_last: bool

def save_safetensors(items: Sequence[tuple[str, torch.Tensor]], path: str | PathLike) -> None: ...
def load_safetensors(path: str | PathLike) -> list[tuple[str, torch.Tensor]]: ...

@final
class OptimizerConfig:
    """An optimizer's kind ("SGD", "Adam", "AdamW"), rate and hyper-parameters, checked by the
    core as torch's constructors check them (ValueError naming the setting). A setting the kind
    does not read is refused; absent ones take the core's defaults (torch's: see ``defaults()``)."""

    def __new__(
        cls,
        kind: str,
        *,
        lr: float | None = None,
        momentum: float | None = None,
        dampening: float | None = None,
        nesterov: bool | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
    ) -> OptimizerConfig: ...
    @staticmethod
    def written(
        kind: str,
        *,
        lr: float,
        momentum: float | None = None,
        dampening: float | None = None,
        nesterov: bool | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
    ) -> OptimizerConfig:
        """Settings written between the steps of a fit; the loop checks them when it applies them
        (the rate may be below zero there, as a schedule may take it)."""
    @property
    def kind(self) -> str: ...
    @property
    def lr(self) -> float: ...
    def settings(self) -> dict[str, Any]:
        """The settings by name, as torch's constructors take them (``betas`` a pair)."""

@final
class ScheduleConfig:
    """A schedule ("StepLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau", "PiecewiseLinear",
    or "Constant") with an optional linear warm-up, checked by the core. A setting the kind does not
    read is refused."""

    def __new__(cls, kind: str, **settings: Any) -> ScheduleConfig:
        """``settings``: the kind's, by torch's names (``T_max``, ``mode="min"``,
        ``threshold_mode="rel"``, ...), and ``warmup_steps`` / ``warmup_start_factor``; None is
        "not given"; absent ones take the core's defaults (see ``defaults()``)."""
    @property
    def kind(self) -> str: ...
    def settings(self) -> dict[str, Any]:
        """The settings by name, as the constructor takes them (the kind's, then the warm-up's)."""

@final
class TrainConfig:
    """The loop's settings, checked by the core."""

    def __new__(
        cls,
        *,
        label_smoothing: float | None = None,
        precision: str | None = None,
        grad_accum_steps: int | None = None,
        grad_clip: float | None = None,
        log_every: int | None = None,
    ) -> TrainConfig:
        """Absent settings take the core's defaults (``defaults()["Trainer"]``)."""

@final
class LookaheadConfig:
    """airbench's lookahead (see fastcifar.optim.Lookahead), checked by the core."""

    def __new__(
        cls, *, total_steps: int, every: int | None = None, decay: float | None = None, power: float | None = None
    ) -> LookaheadConfig: ...
    def settings(self) -> dict[str, Any]:
        """The settings by name, as the constructor takes them."""

def defaults() -> dict[str, dict[str, Any]]:
    """The default of every setting the core checks, by constructor ("SGD", "Adam", "AdamW",
    "StepLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau", "Lookahead", "Trainer"), from
    the core's ``impl Default``s; settings torch requires are left out."""

@final
class TrainHooks:
    """What a fit calls besides the step: ``progress(info)`` every log_every steps (False stops);
    ``poll()`` every step (None or an OptimizerConfig written since); ``outer(active, grads, lr,
    momentum)`` after every optimizer step (with ``owns_optimizer`` it applies the update and
    returns its lr, else it steps a per-batch schedule and returns None or an OptimizerConfig)."""

    def __new__(
        cls,
        *,
        progress: Callable[[dict], bool | None] | None = None,
        poll: Callable[[], OptimizerConfig | None] | None = None,
        outer: Callable[..., object] | None = None,
        owns_optimizer: bool = False,
    ) -> TrainHooks: ...

@final
class EpochStats:
    """One epoch's results."""

    @property
    def loss(self) -> float: ...
    @property
    def accuracy(self) -> float: ...
    @property
    def images(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def lr(self) -> float: ...
    @property
    def stopped(self) -> bool:
        """A callback asked to stop: the epoch ended early, at a step boundary."""
    @property
    def interrupted(self) -> bool:
        """Ctrl-C stopped it."""

@final
class EvalStats:
    """An evaluation's results; ``confusion`` is row-major, true class x predicted."""

    @property
    def loss(self) -> float: ...
    @property
    def accuracy(self) -> float: ...
    @property
    def count(self) -> int: ...
    @property
    def confusion(self) -> list[int]: ...
    @property
    def num_classes(self) -> int: ...

@final
class OptimizerState:
    """The engine optimizer's state. ``params[i]``: parameter i's entry in torch.optim's keys
    (``step``, and ``momentum_buffer`` or ``exp_avg`` / ``exp_avg_sq``), or None before its first step."""

    @property
    def kind(self) -> str: ...
    @property
    def lr(self) -> float: ...
    @property
    def initial_lr(self) -> float: ...
    @property
    def momentum(self) -> float: ...
    @property
    def params(self) -> list[dict[str, Any] | None]: ...

@final
class NativeTrainer:
    """Optimizer, schedule and settings; the model is given to each call."""

    def __new__(
        cls,
        model: NativeModel,
        *,
        params: Sequence[torch.Tensor],
        optimizer: OptimizerConfig,
        schedule: ScheduleConfig | None = None,
        config: TrainConfig | None = None,
    ) -> NativeTrainer: ...
    def train_batches(
        self,
        model: NativeModel,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        *,
        steps: int,
        epoch: int,
        hooks: TrainHooks | None = None,
    ) -> EpochStats:
        """``train_epoch`` over a Python iterable of (images, labels) batches, pulled one per step."""
    def train_epoch(
        self, model: NativeModel, loader: NativeLoader, *, epoch: int, hooks: TrainHooks | None = None
    ) -> EpochStats:
        """One epoch with the GIL released. The progress hook gets epoch, step, steps, loss,
        batch_loss, accuracy, images, seconds, lr, momentum every log_every steps."""
    def set_process_group(self, group: object | None = None, bucket_cap_mb: float = 25.0) -> None:
        """Averages gradients across group's ranks every optimizer step (fastcifar.distributed.ProcessGroup)."""
    def set_param_groups(self, lr_scale: Sequence[float], weight_decay: Sequence[float | None]) -> None:
        """Per parameter: its rate as a multiple of the optimizer's, and its weight decay (None: the optimizer's)."""
    def set_fast_math(self, fast: bool | None = None) -> None:
        """Optimizer arithmetic: None by device (torch.optim's rounding on CPU, float32 on CUDA), True
        float32, False exact."""
    def set_lookahead(self, config: LookaheadConfig | None = None, tensors: Sequence[torch.Tensor] = ...) -> None:
        """airbench's lookahead over ``tensors``; no config removes it."""
    def lookahead_state(self) -> list[torch.Tensor] | None:
        """Copies of the lookahead's average (None before its first update, or without one)."""
    def load_lookahead_state(self, ema: Sequence[torch.Tensor] | None = None) -> None: ...
    def set_max_steps(self, steps: int | None = None) -> None:
        """Training stops once the optimizer has taken this many steps in all (None: no limit)."""
    def end_epoch(self, metric: float | None = None) -> None: ...
    @property
    def lr(self) -> float: ...
    @property
    def momentum(self) -> float:
        """SGD's momentum or Adam's beta1 now."""
    @property
    def global_step(self) -> int: ...
    def set_global_step(self, step: int) -> None: ...
    def optimizer_state(self) -> OptimizerState: ...
    def load_optimizer_state(self, *, lr: float, momentum: float, states: Sequence[dict[str, Any] | None]) -> None:
        """Per-parameter entries as torch.optim keeps them (None: no state yet)."""
    def scheduler_state(self) -> dict[str, float] | None:
        """epoch, step, plateau_lr, best, num_bad, cooldown_counter, base_lr (None without a schedule)."""
    def load_scheduler_state(self, state: dict[str, float]) -> None: ...
    def sync_device(self, model: NativeModel) -> None: ...

def evaluate(
    model: NativeModel, loader: NativeLoader, *, callback: Callable[[int, int], object] | None = None, tta: int = 0
) -> EvalStats:
    """Loss, accuracy and the confusion matrix over one pass of the loader, in eval mode, with
    test-time augmentation at level ``tta`` (0 none, 1 mirror, 2 mirror and translate)."""

def evaluate_batches(
    model: NativeModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    num_classes: int,
    callback: Callable[[int, int], object] | None = None,
    tta: int = 0,
) -> EvalStats:
    """``evaluate`` over a Python iterable of (images, labels) batches."""

def predict_logits(model: NativeModel, x: torch.Tensor, *, batch_size: int = 256, tta: int = 0) -> torch.Tensor:
    """Eval-mode logits of a float batch, ``batch_size`` at a time, at TTA level ``tta`` (as ``evaluate``)."""

def host_reads() -> int:
    """How many tensor values the engine has read back to the host in this process (on CUDA each is
    a wait for the device): at metric reports (``log_every``), epoch ends and results, never per step."""
