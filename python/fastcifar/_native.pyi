"""Type stubs for fastcifar's Rust extension (``fastcifar._native``)."""
from os import PathLike
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

__version__: str

class NativeDataset:
    """A data set held in Rust: one uint8 (N, C, H, W) buffer, labels and class names."""

    @staticmethod
    def cifar(root: str | PathLike, variant: str, train: bool, label: str = "fine", mmap: bool = False) -> Tuple["NativeDataset", str, str]:
        """Loads CIFAR-10 (``"cifar10"``) or CIFAR-100 (``"cifar100"``, label ``"fine"``/``"coarse"``).
        ``mmap``: keep an extracted pickle folder's images in the page cache instead of copying them.
        Returns (data set, layout: "python" | "binary" | "python-archive" | "binary-archive", path read)."""
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

class TransformOp:
    """One validated transform step (built by fastcifar.transforms)."""

    @staticmethod
    def random_crop(size: Tuple[int, int], padding: Sequence[int], fill: Sequence[int], padding_mode: str, pad_if_needed: bool) -> "TransformOp": ...
    @staticmethod
    def center_crop(size: Tuple[int, int]) -> "TransformOp": ...
    @staticmethod
    def horizontal_flip(p: float) -> "TransformOp": ...
    @staticmethod
    def vertical_flip(p: float) -> "TransformOp": ...
    @staticmethod
    def alternating_horizontal_flip() -> "TransformOp": ...
    @staticmethod
    def resize(shorter: Optional[int] = None, exact: Optional[Tuple[int, int]] = None) -> "TransformOp": ...
    @staticmethod
    def to_tensor() -> "TransformOp": ...
    @staticmethod
    def normalize(mean: Sequence[float], std: Sequence[float]) -> "TransformOp": ...
    @staticmethod
    def random_erasing(p: float, scale: Tuple[float, float], ratio: Tuple[float, float], value: Sequence[float]) -> "TransformOp": ...
    @staticmethod
    def cutout(size: int, p: float, value: Sequence[float]) -> "TransformOp": ...
    @property
    def name(self) -> str:
        """The transform's torchvision name ("RandomCrop", "ToTensor", ...)."""

class BatchIter(Iterator[Tuple[torch.Tensor, torch.Tensor]]):
    """One epoch of batches; a background thread builds them. Dropping it stops that thread."""

    def __next__(self) -> Tuple[torch.Tensor, torch.Tensor]: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...

class NativeLoader:
    def __init__(
        self, dataset: NativeDataset, ops: Sequence[TransformOp], batch_size: int, shuffle: bool, drop_last: bool,
        seed: int, prefetch: int, dtype: str, device: str, pin_memory: bool, num_threads: Optional[int] = None,
        rank: int = 0, world_size: int = 1, pad_shards: bool = True,
    ) -> None: ...
    def __len__(self) -> int: ...
    @property
    def out_shape(self) -> Tuple[int, int, int]: ...
    def indices(self, epoch: int) -> List[int]: ...
    def batch(self, indices: Sequence[int], epoch: int) -> Tuple[torch.Tensor, torch.Tensor]: ...
    def epoch(self, epoch: int) -> BatchIter: ...
    def resident(self) -> "NativeLoader":
        """The same loader with the data set on its output device, batches built there (the same batches)."""
    @property
    def is_resident(self) -> bool: ...

def cuda_is_available() -> bool: ...

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
    def train_epoch(self, model: NativeModel, loader: NativeLoader, epoch: int, callback: Optional[Callable[[dict], Optional[bool]]] = None) -> Tuple[dict, bool]:
        """One epoch with the GIL released. Returns (stats, interrupted): stats has loss, accuracy,
        images, seconds, lr, stopped. The callback gets epoch, step, steps, loss, batch_loss,
        accuracy, images, seconds, lr every log_every steps; returning False stops."""
    def set_process_group(self, group: Optional[object] = None, bucket_cap_mb: float = 25.0) -> None:
        """Averages gradients across group's ranks every optimizer step (fastcifar.distributed.ProcessGroup)."""
    def set_param_groups(self, lr_scale: Sequence[float], weight_decay: Sequence[Optional[float]]) -> None:
        """Per parameter: its lr as a multiple of the optimizer's, and its weight decay (None: the optimizer's)."""
    def set_fast_math(self, fast: Optional[bool] = None) -> None:
        """Optimizer arithmetic: None by device (exact on CPU, float32 on CUDA), True float32, False exact."""
    def set_lookahead(self, tensors: Optional[Sequence[torch.Tensor]] = None, *, every: int = 5, start_epoch: int = 0,
                      decay: float = 0.95, power: float = 3.0, total_steps: int = 1) -> None:
        """airbench's lookahead (EMA of the weights, copied back) over tensors; None removes it."""
    def lookahead_state(self) -> Optional[List[torch.Tensor]]:
        """Copies of the lookahead's average, or None."""
    def load_lookahead_state(self, ema: Optional[Sequence[torch.Tensor]] = None) -> None: ...
    def set_max_steps(self, steps: Optional[int] = None) -> None:
        """Training stops once the optimizer has taken this many steps in all."""
    def end_epoch(self, metric: Optional[float] = None) -> None: ...
    @property
    def lr(self) -> float: ...
    @property
    def global_step(self) -> int: ...
    def set_global_step(self, step: int) -> None: ...
    def optimizer_state(self) -> Tuple[str, float, float, Dict[str, float], List[Optional[Tuple[float, Optional[torch.Tensor], Optional[torch.Tensor]]]]]: ...
    def load_optimizer_state(self, lr: float, momentum: float, states: Sequence[Optional[Tuple[float, Optional[torch.Tensor], Optional[torch.Tensor]]]]) -> None: ...
    def scheduler_state(self) -> Optional[Dict[str, float]]: ...
    def load_scheduler_state(self, state: Dict[str, float]) -> None: ...
    def sync_device(self, model: NativeModel) -> None: ...

def evaluate(model: NativeModel, loader: NativeLoader, callback: Optional[Callable[[int, int], object]] = None, tta: int = 0) -> Tuple[float, float, int, List[int], int]:
    """(loss, accuracy, count, confusion matrix row-major, num_classes). tta: 0 none, 1 mirror, 2 mirror and translate."""

def predict_logits(model: NativeModel, x: torch.Tensor, batch_size: int = 256, tta: int = 0) -> torch.Tensor: ...
