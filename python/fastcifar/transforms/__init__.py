"""torchvision-style transforms that fastcifar fuses into one Rust pass per batch.

The names, arguments and semantics follow ``torchvision.transforms``. A ``Compose`` of these is
not run step by step: the loader compiles it once (crops, pads and flips become index maps, ToTensor
and Normalize torchvision's own float32 arithmetic, erasing a rectangle fill) and writes each batch
straight into the output tensor's memory from the uint8 images, on all cores.

torchvision's own transform objects (``torchvision.transforms`` and ``transforms.v2``) are
recognised and compiled the same way: flips, RandomCrop (every padding mode, ``pad_if_needed``),
CenterCrop, Pad, Resize and RandomResizedCrop (bilinear), ToTensor / ToImage + ToDtype(scale=True)
/ PILToTensor + ConvertImageDtype, Normalize and RandomErasing. Anything else (ColorJitter, Lambda,
a function of your own) is not refused: from the first such step on, the rest of the pipeline runs
per image in Python on exactly what torchvision would give it (a PIL image before ToTensor, a tensor
after), with a one-time warning that names the step.

Order rules of the fused pass: geometric transforms (crops, pads, flips, resizes) come before
``ToTensor``; ``Normalize``, ``RandomErasing`` and ``Cutout`` come after it. A step out of that
order runs in Python, as above.

Each transform is also callable on one image, as torchvision's are: a PIL image (geometric
transforms then return a PIL image), an HWC uint8 numpy array or a CHW uint8 tensor (they return a
CHW uint8 tensor), or a float tensor (computed with torch ops). ``ToTensor`` / ``Normalize`` work
on tensors of any device and on (N, C, H, W) batches, e.g. to normalise uint8 batches on the GPU.

The modules, by kind: ``base`` (Transform, Compose, the registry of saved classes), ``geometry``,
``tensor``, ``python_steps`` (the steps with no fused op), ``torchvision`` (v1 / v2 objects as
their twins), ``plan`` (what is fused, and the one runner of the native pass), ``config``
(checkpoints' form of the eval transform).
"""

from .base import _SAVED as _SAVED
from .base import Compose, Transform
from .base import pil_from_hwc as pil_from_hwc
from .base import to_pil as to_pil
from .config import deterministic_part as deterministic_part
from .config import from_config as from_config
from .config import to_config as to_config
from .geometry import (
    AlternatingHorizontalFlip,
    CenterCrop,
    Pad,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
    Resize,
)
from .plan import Plan as Plan
from .plan import _native_op as _native_op  # the Rust side unpickles ops through it
from .plan import ops_of as ops_of
from .python_steps import ColorJitter, Lambda, RandomRotation
from .tensor import ConvertImageDtype, Cutout, Normalize, PILToTensor, RandomErasing, ToDtype, ToImage, ToTensor
from .torchvision import from_torchvision

__all__ = [
    "Transform",
    "Compose",
    "RandomCrop",
    "CenterCrop",
    "Pad",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "AlternatingHorizontalFlip",
    "Resize",
    "RandomResizedCrop",
    "ToTensor",
    "PILToTensor",
    "ToImage",
    "ToDtype",
    "ConvertImageDtype",
    "Normalize",
    "RandomErasing",
    "Cutout",
    "Lambda",
    "ColorJitter",
    "RandomRotation",
    "from_torchvision",
]
