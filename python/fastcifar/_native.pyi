"""Type stubs for fastcifar's Rust extension (``fastcifar._native``)."""
from os import PathLike
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

__version__: str

class NativeDataset:
    """A data set held in Rust: one uint8 (N, C, H, W) buffer, labels and class names."""

    @staticmethod
    def cifar(root: str | PathLike, variant: str, train: bool, *, label: str = "fine", mmap: bool = False) -> "CifarFiles":
        """Loads CIFAR-10 (``"cifar10"``) or CIFAR-100 (``"cifar100"``, label ``"fine"``/``"coarse"``).
        ``mmap``: keep an extracted pickle folder's images in the page cache instead of copying them."""
    @staticmethod
    def image_folder(root: str | PathLike, size: Optional[Tuple[int, int]] = None) -> "NativeDataset": ...
    @staticmethod
    def from_numpy(images: np.ndarray, labels: Sequence[int], classes: Sequence[str]) -> "NativeDataset":
        """From a C-contiguous uint8 (N, H, W, C) array."""
    def __len__(self) -> int: ...
    @property
    def shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of every image."""
    @property
    def mapped(self) -> bool:
        """Whether the images are the files' own pages (``mmap=True``) rather than a copy."""
    @property
    def classes(self) -> List[str]: ...
    @property
    def targets(self) -> np.ndarray:
        """int64 labels (a copy)."""
    def class_counts(self) -> List[int]: ...
    def buffer(self) -> np.ndarray:
        """The flat uint8 image buffer, read-only, borrowing this object's memory."""
    def select(self, indices: Sequence[int]) -> "NativeDataset": ...

class CifarFiles:
    """What ``NativeDataset.cifar`` found."""

    @property
    def dataset(self) -> NativeDataset: ...
    @property
    def layout(self) -> str:
        """"python", "binary", "python-archive" or "binary-archive"."""
    @property
    def path(self) -> str:
        """The folder or archive read."""

class TransformOp:
    """One transform step, checked by the core when it is made (built by fastcifar.transforms).
    Sizes are (h, w); paddings (left, top, right, bottom); fills pixel values in [0, 255]."""

    @staticmethod
    def random_crop(
        *, size: Tuple[int, int], padding: Sequence[int], fill: Sequence[float], padding_mode: str, pad_if_needed: bool
    ) -> "TransformOp":
        """Pads, then crops ``size`` at a uniform offset; padding_mode 'constant', 'edge', 'reflect' or 'symmetric'."""
    @staticmethod
    def center_crop(*, size: Tuple[int, int]) -> "TransformOp": ...
    @staticmethod
    def pad(*, padding: Sequence[int], fill: Sequence[float], padding_mode: str) -> "TransformOp":
        """Pads by (left, top, right, bottom); padding_mode 'constant', 'edge', 'reflect' or 'symmetric'."""
    @staticmethod
    def random_resized_crop(*, size: Tuple[int, int], scale: Tuple[float, float], ratio: Tuple[float, float]) -> "TransformOp":
        """torchvision's RandomResizedCrop, bilinear with Pillow's pixels."""
    @staticmethod
    def horizontal_flip(*, p: float) -> "TransformOp": ...
    @staticmethod
    def vertical_flip(*, p: float) -> "TransformOp": ...
    @staticmethod
    def resize(*, shorter: Optional[int] = None, exact: Optional[Tuple[int, int]] = None) -> "TransformOp":
        """``shorter``: the shorter side becomes this (keeping the aspect ratio); ``exact``: (h, w)."""
    @staticmethod
    def to_tensor() -> "TransformOp": ...
    @staticmethod
    def to_dtype_scaled() -> "TransformOp":
        """transforms.v2's ToImage + ToDtype(torch.float32, scale=True): x * float32(1 / 255)."""
    @staticmethod
    def normalize(*, mean: Sequence[float], std: Sequence[float]) -> "TransformOp": ...
    @staticmethod
    def random_erasing(*, p: float, scale: Tuple[float, float], ratio: Tuple[float, float], value: Sequence[float]) -> "TransformOp": ...
    @staticmethod
    def cutout(*, size: int, p: float, value: Sequence[float]) -> "TransformOp": ...
    @property
    def name(self) -> str:
        """The transform's torchvision name ("RandomCrop", "ToTensor", ...)."""

class BatchIter(Iterator[Tuple[torch.Tensor, torch.Tensor]]):
    """One epoch of batches; a background thread builds them. Dropping it stops that thread."""

    def __next__(self) -> Tuple[torch.Tensor, torch.Tensor]: ...
    def __len__(self) -> int: ...
    def set_timeout(self, *, seconds: float) -> None:
        """Waiting longer than this for a batch raises (torch's DataLoader timeout); 0: no limit."""
    def close(self) -> None: ...

_Device = str | torch.device | int | None

class NativeLoader:
    def __init__(
        self, dataset: NativeDataset, ops: Sequence[TransformOp], *, batch_size: int, shuffle: bool = False,
        drop_last: bool = False, seed: int = 0, prefetch: int = 2, dtype: str = "float32", device: _Device = None,
        pin_memory: bool = False, num_threads: Optional[int] = None, rank: int = 0, world_size: int = 1,
        pad_shards: bool = True, labels: Optional[Sequence[int]] = None,
    ) -> None:
        """``dtype``: "float32" or "uint8" (also "torch.float32" / "torch.uint8"). ``device``: as
        ``resolve_device`` takes it (None: torch's default device). ``labels``: emitted instead of the
        data set's (its target_transform applied), one per image. ``pin_memory`` on a CPU device pins
        the batches when CUDA exists. The core checks every value and names the one at fault."""
    def __len__(self) -> int: ...
    @property
    def out_shape(self) -> Tuple[int, int, int]: ...
    def indices(self, epoch: int) -> List[int]: ...
    def batch(self, indices: Sequence[int], epoch: int) -> Tuple[torch.Tensor, torch.Tensor]: ...
    def epoch(self, epoch: int) -> BatchIter: ...
    def epoch_batches(self, *, epoch: int, batches: Sequence[Sequence[int]]) -> BatchIter:
        """These batches of data set indices (a sampler's), with the randomness of ``epoch``."""

def cuda_is_available() -> bool: ...

class DeviceError(ValueError, RuntimeError):
    """A device fastcifar does not know: a ValueError, and a RuntimeError as ``torch.device`` raises."""

def resolve_device(device: _Device) -> str:
    """"cpu", "cuda" or "cuda:N" for 'cpu', 'cuda', 'cuda:N', 'auto' (CUDA when present), an int N,
    a torch.device, or None (torch's default device). Raises ``DeviceError`` for another device,
    RuntimeError when CUDA is asked for but absent, ValueError for a CUDA index that does not exist."""

def decode_images(paths: Sequence[str | PathLike], size: Tuple[int, int]) -> np.ndarray:
    """Decodes PNG / JPEG files to uint8 (N, H, W, 3), resized (bilinear) to size = (h, w)."""

# A node argument: ("x", 0) the input, ("v", i) node i, ("p", i) tensor i, a list, or a constant.
PlanArg = Any
Plan = Tuple[List[Tuple[str, List[PlanArg], str]], PlanArg]

class NativeModel:
    """An nn.Module on the Rust engine: graphs over the module's own tensors, or its own forward."""

    @staticmethod
    def graph(name: str, names: Sequence[str], tensors: Sequence[torch.Tensor], *, train: Plan, eval: Plan) -> NativeModel:
        """Runs the train / eval programs (fastcifar._graph) over ``tensors`` (shared)."""
    @staticmethod
    def eager(name: str, names: Sequence[str], tensors: Sequence[torch.Tensor], *, forward: Callable[[torch.Tensor, bool], torch.Tensor]) -> NativeModel:
        """Calls ``forward(x, train)`` (eager PyTorch) for the logits."""
    def rebind(self, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
        """Takes the module's current tensors (same names, same order)."""
    def forward(self, x: torch.Tensor, *, train: Optional[bool] = None) -> torch.Tensor: ...
    def set_sync_bn(self, func: Optional[Callable[..., torch.Tensor]] = None) -> None:
        """SyncBatchNorm: func(x, weight, bias, running_mean, running_var, momentum, eps) -> y in training mode."""
    @property
    def device(self) -> str: ...
    @property
    def is_graph(self) -> bool: ...
    training: bool

def save_safetensors(items: Sequence[Tuple[str, torch.Tensor]], path: str | PathLike) -> None: ...
def load_safetensors(path: str | PathLike) -> List[Tuple[str, torch.Tensor]]: ...

class NativeTrainer:
    """Optimizer, schedule and settings; the model is given to each call."""

    def __init__(
        self, model: NativeModel, params: Sequence[torch.Tensor], optimizer: str, opt_settings: Dict[str, float],
        scheduler: Optional[str], sched_settings: Dict[str, float], label_smoothing: float, amp: bool,
        grad_accum: int, grad_clip: Optional[float], log_every: int,
    ) -> None: ...
    def train_batches(self, model: NativeModel, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], steps: int, epoch: int,
                      callback: Optional[Callable[[dict], Optional[bool]]] = None, *, poll: Optional[Callable[[], object]] = None,
                      outer: Optional[Callable[..., object]] = None, owns_optimizer: bool = False) -> Tuple[dict, bool]:
        """``train_epoch`` over a Python iterable of (images, labels) batches, pulled one per step."""
    def train_epoch(self, model: NativeModel, loader: NativeLoader, epoch: int, callback: Optional[Callable[[dict], Optional[bool]]] = None,
                    *, poll: Optional[Callable[[], object]] = None, outer: Optional[Callable[..., object]] = None,
                    owns_optimizer: bool = False) -> Tuple[dict, bool]:
        """One epoch with the GIL released. Returns (stats, interrupted): stats has loss, accuracy,
        images, seconds, lr, stopped. The callback gets epoch, step, steps, loss, batch_loss,
        accuracy, images, seconds, lr every log_every steps; returning False stops."""
    def set_process_group(self, group: Optional[object] = None, bucket_cap_mb: float = 25.0) -> None:
        """Averages gradients across group's ranks every optimizer step (fastcifar.distributed.ProcessGroup)."""
    def end_epoch(self, metric: Optional[float] = None) -> None: ...
    @property
    def lr(self) -> float: ...
    @property
    def momentum(self) -> float:
        """SGD's momentum or Adam's beta1 now."""
    @property
    def global_step(self) -> int: ...
    def set_global_step(self, step: int) -> None: ...
    def optimizer_state(self) -> Tuple[str, float, float, Dict[str, float], List[Optional[Tuple[float, Optional[torch.Tensor], Optional[torch.Tensor]]]]]: ...
    def load_optimizer_state(self, lr: float, momentum: float, states: Sequence[Optional[Tuple[float, Optional[torch.Tensor], Optional[torch.Tensor]]]]) -> None: ...
    def scheduler_state(self) -> Optional[Dict[str, float]]: ...
    def load_scheduler_state(self, state: Dict[str, float]) -> None: ...
    def sync_device(self, model: NativeModel) -> None: ...

def evaluate(model: NativeModel, loader: NativeLoader, callback: Optional[Callable[[int, int], object]] = None) -> Tuple[float, float, int, List[int], int]:
    """(loss, accuracy, count, confusion matrix row-major, num_classes)."""

def evaluate_batches(model: NativeModel, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], steps: int, num_classes: int,
                     callback: Optional[Callable[[int, int], object]] = None) -> Tuple[float, float, int, List[int], int]:
    """``evaluate`` over a Python iterable of (images, labels) batches."""

def predict_logits(model: NativeModel, x: torch.Tensor, batch_size: int = 256, tta: bool = False) -> torch.Tensor: ...
