"""Command line: ``fastcifar train | evaluate | predict | info`` (also ``python -m fastcifar``).

    fastcifar train --data DIR --model image_classifier --epochs 50 --batch-size 128 --lr 1e-3 \\
                    --device auto --out runs/NAME
    fastcifar train --dataset fashionmnist --model mypkg.nets:Net --out runs/f   # any data set, any model
    fastcifar train --resume runs/NAME/best.ckpt.pth --epochs 60     # continue a run
    fastcifar train --recipe airbench94 --out runs/a94     # a whole recipe (fastcifar.recipes)
    fastcifar train --recipe airbench94_muon --out runs/m  # its Muon successor: 8 epochs at batch 2000
    fastcifar evaluate runs/NAME/best.pth --data DIR      # any file train wrote
    fastcifar predict runs/NAME/best.pth cat.png dog.jpg
    fastcifar info --data DIR

The data folder is found from --data, then $FASTCIFAR_DATA, then ./data; ``--download`` fetches
the data set when none is there.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import time
from typing import Any

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
MODELS = ("image_classifier", "resnet9", "resnet18", "small_cnn")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A data set the CLI trains on: its fastcifar class, how its splits are asked for, and the
    training augmentation's normalisation and flip."""

    title: str
    cls: str  # the fastcifar class's name
    mean: tuple
    std: tuple
    flip: bool  # horizontal flips (not for digits: a mirrored 2 is no 2)
    split: str = "train"  # "train": train=True/False; "split": split="train"/"test"; "folder": DIR/train, DIR/test

    def open(self, root: str, train: bool, download: bool = False, transform=None, image_size=None):
        import fastcifar

        cls: Any = getattr(fastcifar, self.cls)
        if self.split == "split":
            return cls(root, split="train" if train else "test", download=download, transform=transform)
        if self.split == "folder":
            sub = (
                "train" if train else next((d for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), "test")
            )
            return cls(os.path.join(root, sub), size=image_size, transform=transform)
        return cls(root, train=train, download=download, transform=transform)


# The one list of data sets the CLI knows (--dataset's choices, find_data's messages, run.json).
DATASETS = {
    "cifar10": DataSpec("CIFAR-10", "CIFAR10", MEAN, STD, True),
    "cifar100": DataSpec("CIFAR-100", "CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    "mnist": DataSpec("MNIST", "MNIST", (0.1307,), (0.3081,), False),
    "fashionmnist": DataSpec("FashionMNIST", "FashionMNIST", (0.2860,), (0.3530,), True),
    "svhn": DataSpec("SVHN", "SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False, "split"),
    "folder": DataSpec("an image folder", "ImageFolder", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True, "folder"),
}


def _model_arg(s: str) -> str:
    """--model: a built-in's name, or ``module:Class`` for your own nn.Module class."""
    if s in MODELS or (":" in s and all(s.partition(":")[::2])):
        return s
    raise argparse.ArgumentTypeError(f"{s!r} is not one of {', '.join(MODELS)} nor module:Class")


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" where an option has a default value; an option whose default depends
    on others (None here) says it in its own help text instead of "(default: None)"."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *a, **k):
        # --help shows every default (argparse adds "(default: ...)" where an argument has a help text).
        k.setdefault("formatter_class", _Defaults)
        super().__init__(*a, **k)

    def error(self, message):  # usage errors: a short message and exit code 2, never a traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


class _Noted(argparse.Action):
    """Stores the option's value and notes that it was given: ``--recipe`` refuses the options the
    recipe sets, even when given with their default value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = [*namespace.given, "--" + self.dest.replace("_", "-")]


class _NotedFlag(_Noted):
    def __init__(self, option_strings, dest, default=False, **kw):
        super().__init__(option_strings, dest, nargs=0, default=default, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, True, option_string)


def _positive_float(s):
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def find_data(explicit: str | None, download: bool = False, dataset: str = "cifar10") -> str:
    """--data, then $FASTCIFAR_DATA, then ./data; with download, ./data (or --data) is filled.
    Each candidate is tried by opening the data set's test split, whose own message says what it
    looked for."""
    spec = DATASETS[dataset]
    if explicit:
        candidates = [explicit]
    else:
        candidates = [c for c in (os.environ.get("FASTCIFAR_DATA"), "data") if c]
    misses = []
    for c in candidates:
        try:
            spec.open(c, False)
            return c
        except FileNotFoundError as e:
            misses.append(f"{c}: {e}")
        except ValueError as e:  # the data is there but broken: say so rather than "not found"
            if "pass size=" in str(e):
                return c  # an image folder of mixed sizes: --image-size decides, at training
            raise SystemExit(f"fastcifar: {spec.title} in {c} is unreadable: {e}") from None
    if download and spec.split != "folder":
        root = explicit or "data"
        spec.open(root, False, download=True)
        return root
    looked = "; ".join(misses) or "no folder to look in"
    if explicit:
        fix = "point --data at the folder that holds it" + ("" if spec.split == "folder" else ", or add --download")
        raise SystemExit(f"fastcifar: no {spec.title} found in --data {explicit} ({looked}); {fix}.")
    where = f"$FASTCIFAR_DATA ({os.environ.get('FASTCIFAR_DATA') or 'unset'}) or ./data"
    raise SystemExit(
        f"fastcifar: no {spec.title} found in {where} ({looked}); pass --data DIR"
        + ("." if spec.split == "folder" else ", or add --download to fetch it.")
    )


def _transforms(train: bool, dataset: str = "cifar10", size: int = 32):
    """The CLI's augmentation: flip (where the data set allows it) and a padded crop of the image's
    own size for training; ToTensor and the data set's Normalize for both."""
    from fastcifar import transforms as T

    spec = DATASETS[dataset]
    tail = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    if not train:
        return T.Compose(tail)
    flip = [T.RandomHorizontalFlip()] if spec.flip else []
    return T.Compose([*flip, T.RandomCrop(size, padding=size // 8), *tail])


def _build_model(name: str, num_classes: int, shape: tuple, width: int):
    """A built-in for ``num_classes`` classes and (C, H, W) images, or your ``module:Class``
    (given num_classes / in_channels / input_size where its constructor takes them)."""
    from fastcifar import models
    from fastcifar.engine.checkpoint import import_model

    c, h, _ = shape
    if ":" in name:
        sys.path.insert(0, os.getcwd())  # as `python -m` finds a module beside you
        return import_model(name, "--model", num_classes=num_classes, in_channels=c, input_size=h)
    return {
        "image_classifier": lambda: models.ImageClassifier(num_classes, in_channels=c, input_size=h),
        "resnet9": lambda: models.resnet9(num_classes, in_channels=c),
        "resnet18": lambda: models.resnet18(num_classes, cifar_stem=True, in_channels=c),
        "small_cnn": lambda: models.small_cnn(num_classes, width=width, in_channels=c),
    }[name]()


# What run.json records of `train`'s options, so that --resume (and evaluate) reuse them.
_RUN_KEYS = (
    "dataset",
    "data",
    "image_size",
    "model",
    "width",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "optimizer",
    "scheduler",
    "seed",
    "subset",
    "test_subset",
    "amp",
)


def _run_file(checkpoint: str) -> dict:
    """The run.json that train wrote beside a checkpoint, or {}."""
    p = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "run.json")
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def cmd_train_recipe(a) -> int:
    """``fastcifar train --recipe NAME``: the recipe's network, optimizer, schedule, augmentation
    and TTA (fastcifar.recipes) through the same Trainer; --epochs and --batch-size override the
    recipe's, and the options the recipe sets itself are refused rather than ignored."""
    import torch

    import fastcifar
    from fastcifar import recipes

    if a.given:
        raise SystemExit(f"fastcifar: {', '.join(a.given)}: not with --recipe {a.recipe} (the recipe sets them)")
    if a.dataset != "cifar10" or a.resume:
        raise SystemExit(
            f"fastcifar: --recipe {a.recipe} trains on CIFAR-10 from scratch: "
            f"{'--resume' if a.resume else '--dataset ' + a.dataset} does not apply"
        )
    root = find_data(a.data, a.download)
    train: fastcifar.Dataset = fastcifar.CIFAR10(root, train=True)
    test: fastcifar.Dataset = fastcifar.CIFAR10(root, train=False)
    if a.subset:
        train = train.subset(range(min(a.subset, len(train))))
    if a.test_subset:
        test = test.subset(range(min(a.test_subset, len(test))))
    kw = {k: v for k, v in (("epochs", a.epochs), ("batch_size", a.batch_size), ("amp", a.amp)) if v is not None}
    t0 = time.perf_counter()
    r = recipes.RECIPES[a.recipe](train=train, test=test, device=a.device, seed=a.seed, **kw)
    if r.trainer.is_main:
        os.makedirs(a.out, exist_ok=True)
        n = sum(p.numel() for p in r.model.parameters())
        print(
            f"fastcifar {fastcifar.__version__}: recipe {a.recipe} ({n:,} parameters) on "
            f"{r.trainer.device}; {len(train)} training / {len(test)} test images, {r.max_steps} steps of "
            f"{r.train_loader.batch_size}"
        )
    history, report = r.run(progress=not a.quiet)
    seconds = time.perf_counter() - t0
    if not r.trainer.is_main:
        return 0
    r.trainer.save(os.path.join(a.out, "checkpoint.pth"))
    torch.save(r.model.state_dict(), os.path.join(a.out, "model_weights.pth"))
    history.to_json(os.path.join(a.out, "history.json"))
    history.to_csv(os.path.join(a.out, "history.csv"))
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(dict(report.to_dict(), tta=r.tta, seconds=seconds, recipe=a.recipe), f, indent=2)
    # A checkpoint rebuilds the engine's optimizers and schedules; the recipe's own (MuonSGD and its
    # LambdaLR) come back by building the recipe again and loading the checkpoint into its trainer.
    if r.trainer._bridge.on_engine:
        reload = f"fastcifar.Trainer.load(path, model=fastcifar.recipes.{recipes.NETWORKS[a.recipe].__name__}())"
    else:
        reload = f"fastcifar.recipes.{a.recipe}(...).trainer.load_checkpoint(path)"
    print(
        f"\n{report}\n\n{a.recipe}: test accuracy {100 * report.accuracy:.2f}% (TTA level {r.tta}) in {seconds:.1f}s "
        f"from data on disk. Wrote checkpoint.pth, model_weights.pth, history.json, history.csv, report.json to "
        f"{a.out}/ (reload: {reload})"
    )
    return 0


def _resume_args(a) -> None:
    """--resume: the options not given now come from the run.json beside the checkpoint (what
    the run was started with); the model, optimizer and schedule come from the checkpoint itself,
    so options that would set them are refused rather than ignored."""
    if a.given:
        raise SystemExit(
            f"fastcifar: {', '.join(a.given)}: not with --resume (the checkpoint holds the model, optimizer "
            "and schedule; start a new run to change them)"
        )
    defaults = build_parser().parse_args(["train"])
    run = _run_file(a.resume)
    for k in _RUN_KEYS:
        if k in run and getattr(a, k) == getattr(defaults, k):
            setattr(a, k, run[k])
    if a.out == defaults.out:
        a.out = os.path.dirname(os.path.abspath(a.resume))


def cmd_train(a) -> int:
    import torch

    import fastcifar
    from fastcifar import distributed, plot

    if a.recipe:
        return cmd_train_recipe(a)
    if a.resume:
        _resume_args(a)
    a.epochs = 50 if a.epochs is None else a.epochs
    a.batch_size = 128 if a.batch_size is None else a.batch_size
    root = find_data(a.data, a.download, a.dataset)
    spec = DATASETS[a.dataset]
    probe = spec.open(root, True, image_size=a.image_size)
    shape = tuple(probe.shape)
    full_train = spec.open(root, True, transform=_transforms(True, a.dataset, shape[1]), image_size=a.image_size)
    source = getattr(full_train, "source", None) or getattr(full_train, "root", root)
    train: fastcifar.Dataset = full_train
    test: fastcifar.Dataset = spec.open(root, False, transform=_transforms(False, a.dataset), image_size=a.image_size)
    if a.subset:
        train = train.subset(range(min(a.subset, len(train))))
    if a.test_subset:
        test = test.subset(range(min(a.test_subset, len(test))))
    torch.manual_seed(a.seed)
    trainloader = fastcifar.DataLoader(train, batch_size=a.batch_size, shuffle=True, seed=a.seed)
    testloader = fastcifar.DataLoader(test, batch_size=max(a.batch_size, 256))
    if distributed.launched():  # this rank's shard (--seed is the same on every rank); fit uses it as it is
        trainloader = trainloader.shard(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    if a.resume:
        trainer = fastcifar.Trainer.load(a.resume, device=a.device)
        model = trainer.model
    else:
        model = _build_model(a.model, len(full_train.classes), shape, a.width)
        trainer = fastcifar.Trainer(
            model,
            optimizer=_optimizer(a),
            scheduler=_schedule(a, len(trainloader)),  # the schedule counts this rank's steps
            device=a.device,
            amp=a.amp or "off",
            seed=a.seed,
            sync_bn=a.sync_bn,
        )
    # Under torchrun every rank runs this; the trainer shards the loaders (--batch-size is per rank)
    # and only rank 0 prints and writes.
    main = trainer.is_main
    epochs = max(0, a.epochs - trainer.epoch)  # --epochs counts the whole run, resumed epochs included
    if main:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "run.json"), "w") as f:
            json.dump({k: getattr(a, k) for k in _RUN_KEYS}, f, indent=2)
        par = f", data-parallel over {trainer.world_size} processes" if trainer.world_size > 1 else ""
        n = sum(p.numel() for p in model.parameters())
        resumed = f"; resuming {a.resume} after epoch {trainer.epoch}" if a.resume else ""
        print(
            f"fastcifar {fastcifar.__version__}: {a.model} ({n:,} parameters) on {trainer.device}{par}; "
            f"{len(train)} training / {len(test)} test images of {spec.title} from {source}{resumed}"
        )
    t0 = time.perf_counter()
    history = trainer.fit(
        trainloader,
        testloader,
        epochs=epochs,
        checkpoint=os.path.join(a.out, "best.pth"),
        progress=False if a.quiet else None,
    )
    seconds = time.perf_counter() - t0
    report = trainer.evaluate(testloader, progress=False)
    if not main:
        return 0
    trainer.save(os.path.join(a.out, "checkpoint.pth"))
    trainer.save_weights(os.path.join(a.out, "model_weights.pth"))
    saved = ["best.pth", "best.ckpt.pth", "checkpoint.pth", "model_weights.pth"]
    if isinstance(model, fastcifar.models.Module):
        model.save(os.path.join(a.out, "model.safetensors"))
        saved.append("model.safetensors")
    history.to_json(os.path.join(a.out, "history.json"))
    history.to_csv(os.path.join(a.out, "history.csv"))
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report.to_dict(), f, indent=2)
    saved += ["history.json", "history.csv", "report.json", "run.json"]
    try:
        saved += plot.save_run_plots(trainer, history, report, test, a.out)
    except ImportError as e:
        print(f"(plots skipped: {e})")
    print(
        f"\n{report}\n\nTrained {_plural(epochs, 'epoch')} in {seconds:.1f}s "
        f"({_plural(trainer.epoch, 'epoch')} in all). Wrote {', '.join(saved)} to {a.out}/"
    )
    if not a.full_hint_off and trainer.device == "cpu" and not a.resume:
        print(
            "Full seed recipe (50 epochs of ImageClassifier; use a GPU): "
            "fastcifar train --model image_classifier --epochs 50 --batch-size 128 --lr 1e-3 "
            "--device cuda --out runs/full"
        )
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _optimizer(a):
    from fastcifar import optim

    return {
        "adam": lambda: optim.Adam(lr=a.lr, weight_decay=a.weight_decay),
        "adamw": lambda: optim.AdamW(lr=a.lr, weight_decay=a.weight_decay),
        "sgd": lambda: optim.SGD(lr=a.lr, momentum=0.9, nesterov=True, weight_decay=a.weight_decay),
    }[a.optimizer]()


def _schedule(a, steps_per_epoch: int):
    from fastcifar import optim

    return {
        "plateau": lambda: optim.lr_scheduler.ReduceLROnPlateau(mode="min", patience=3),
        "onecycle": lambda: optim.lr_scheduler.OneCycleLR(max_lr=a.lr, total_steps=a.epochs * steps_per_epoch),
        "cosine": lambda: optim.lr_scheduler.CosineAnnealingLR(T_max=a.epochs),
        "none": lambda: None,
    }[a.scheduler]()


def _sibling_checkpoint(path: str) -> str | None:
    """The full checkpoint of the run that wrote the weights file ``path``: ``<stem>.ckpt.pth``,
    then checkpoint.pth, then any ``*.ckpt.pth`` in the same folder."""
    d = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    for name in (
        f"{stem}.ckpt.pth",
        "checkpoint.pth",
        "best.ckpt.pth",
        *sorted(glob.glob(os.path.join(d, "*.ckpt.pth"))),
    ):
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.path.abspath(p) != os.path.abspath(path):
            return p
    return None


def _weights(path: str):
    """The tensors of a weights file (a state_dict .pth or .safetensors), or None when ``path``
    is a full checkpoint (or not a weights file)."""
    import torch

    import fastcifar

    if path.endswith(".safetensors"):
        return dict(fastcifar._native.load_safetensors(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None  # read_checkpoint names what is wrong with it
    if (
        isinstance(obj, dict)
        and obj
        and "model_state_dict" not in obj
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        return obj
    return None


def _load_trainer(path, device):
    """A trainer from any file `train` writes: a full checkpoint (checkpoint.pth, best.ckpt.pth),
    or weights alone (best.pth, model_weights.pth, model.safetensors), whose model, classes and eval
    transform come from the run's checkpoint beside them."""
    import fastcifar

    path = os.fspath(path)
    try:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such checkpoint or weights file")
        weights = _weights(path)
        if weights is None:
            return fastcifar.Trainer.load(path, device=device)
        ckpt = _sibling_checkpoint(path)
        if ckpt is None:
            raise ValueError(
                f"{path}: holds weights only (a state_dict), not the model they belong to; pass the run's full "
                "checkpoint (checkpoint.pth or best.ckpt.pth, which train writes beside it), or put it in the same "
                "folder"
            )
        tr = fastcifar.Trainer.load(ckpt, device=device)
        try:
            tr.model.load_state_dict(weights)
        except RuntimeError as e:
            raise ValueError(f"{path}: its weights do not fit the model of {ckpt} ({e})") from None
        return tr
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"fastcifar: {e}") from None


def cmd_evaluate(a) -> int:
    tr = _load_trainer(a.checkpoint, a.device)
    run = _run_file(a.checkpoint)
    dataset = a.dataset or run.get("dataset", "cifar10")
    root = find_data(a.data, False, dataset)
    spec = DATASETS[dataset]
    test = spec.open(
        root, False, transform=tr.eval_transform or _transforms(False, dataset), image_size=run.get("image_size")
    )
    import fastcifar

    rep = tr.evaluate(fastcifar.DataLoader(test, batch_size=a.batch_size), progress=False if a.quiet else None)
    print(json.dumps(rep.to_dict()) if a.json else rep)
    return 0


def cmd_predict(a) -> int:
    import fastcifar

    tr = _load_trainer(a.checkpoint, a.device)
    try:
        probs = tr.predict_proba([os.fspath(p) for p in a.images], tta=a.tta).cpu()
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"fastcifar: {e}") from None
    classes = tr.classes or (fastcifar.CLASSES if probs.shape[1] == 10 else [str(i) for i in range(probs.shape[1])])
    for path, p in zip(a.images, probs):
        top = p.argsort(descending=True)[: a.top]
        print(f"{path}: " + ", ".join(f"{classes[i]} {100 * p[i].item():.1f}%" for i in top))
    return 0


def cmd_info(a) -> int:
    import fastcifar

    root = find_data(a.data, a.download)
    for train in (True, False):
        t0 = time.perf_counter()
        ds = fastcifar.CIFAR10(root, train=train)
        dt = time.perf_counter() - t0
        print(
            f"{'train' if train else 'test'}: {len(ds)} images {ds.data.shape[1:]} from {ds.source} "
            f"({ds.layout}), decoded in {1000 * dt:.0f} ms"
        )
        print("  " + ", ".join(f"{c} {n}" for c, n in ds.class_counts().items()))
    return 0


def _version() -> str:
    # The built extension's own version (Cargo.toml's, the one source): right for a source tree
    # too, where the installed distribution's metadata may be another build's.
    import fastcifar

    return fastcifar.__version__


_DATASET_HELP = (
    "the data set: " + ", ".join(f"{k} ({v.title})" for k, v in DATASETS.items()) + "; folder reads --data's "
    "train/ and test/ (or val/) <class>/<image> trees"
)


def build_parser() -> argparse.ArgumentParser:
    # The package (and so torch and the recipes) is imported already when this module is.
    from fastcifar.recipes import RECIPES

    p = _Parser(prog="fastcifar", description="Fast CIFAR-10 training for PyTorch, with the hot loops in Rust.")
    p.add_argument("--version", action="version", version=f"fastcifar {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train, evaluate and save a model")
    t.add_argument("--data", help="folder with the data set (default: $FASTCIFAR_DATA, then ./data)")
    t.add_argument("--dataset", choices=tuple(DATASETS), default="cifar10", help=_DATASET_HELP)
    t.add_argument(
        "--image-size", type=_positive_int, help="--dataset folder: resize every image to N x N (else all must agree)"
    )
    t.add_argument("--download", action="store_true", help="fetch the data set if it is not there")
    t.add_argument(
        "--resume",
        metavar="PATH",
        help="continue the run of this checkpoint (best.ckpt.pth or checkpoint.pth) up to --epochs in all; "
        "the run's other options come from the run.json beside it",
    )
    t.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        help="a whole training recipe (fastcifar.recipes): network, optimizer, schedule, augmentation and TTA; "
        "--model, --width, --lr, --weight-decay, --optimizer, --scheduler and --sync-bn do not apply",
    )
    t.set_defaults(given=[])
    t.add_argument(
        "--model",
        type=_model_arg,
        default="image_classifier",
        action=_Noted,
        help=f"a built-in network ({', '.join(MODELS)}) or module:Class for your own nn.Module class "
        "(importable from here; built with num_classes / in_channels / input_size where it takes them)",
    )
    t.add_argument("--width", type=_positive_int, default=32, action=_Noted, help="small_cnn width")
    t.add_argument("--epochs", type=_positive_int, help="epochs to train (default: 50), or the recipe's with --recipe")
    t.add_argument(
        "--batch-size",
        type=_positive_int,
        help="images per batch, per rank under torchrun (default: 128), or the recipe's with --recipe",
    )
    t.add_argument(
        "--lr", type=_positive_float, default=1e-3, action=_Noted, help="learning rate (the peak with onecycle)"
    )
    t.add_argument("--weight-decay", type=float, default=1e-4, action=_Noted, help="weight decay")
    t.add_argument(
        "--optimizer",
        choices=("adam", "adamw", "sgd"),
        default="adam",
        action=_Noted,
        help="optimizer (sgd: momentum 0.9, nesterov)",
    )
    t.add_argument(
        "--scheduler",
        choices=("plateau", "onecycle", "cosine", "none"),
        default="plateau",
        action=_Noted,
        help="learning-rate schedule",
    )
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument(
        "--amp",
        nargs="?",
        const="auto",
        choices=("auto", "bf16", "fp16", "off"),
        help="mixed precision: auto (what --amp alone means: bf16 where the CPU or GPU has it, fp16 on older "
        "GPUs), bf16, fp16 or off (default: off, or the recipe's with --recipe: auto)",
    )
    t.add_argument("--sync-bn", action=_NotedFlag, help="under torchrun: BatchNorm statistics over the global batch")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights, shuffle and augmentation")
    t.add_argument("--subset", type=_positive_int, help="train on the first N training images")
    t.add_argument("--test-subset", type=_positive_int, help="evaluate on the first N test images")
    t.add_argument("--out", default=os.path.join("runs", "default"), help="output folder")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--full-hint-off", action="store_true", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="per-class accuracy of a checkpoint on the test set")
    e.add_argument("checkpoint", help="any file train writes: a checkpoint, or weights (.pth, .safetensors)")
    e.add_argument("--data", help="folder with the data set (default: $FASTCIFAR_DATA, then ./data)")
    e.add_argument(
        "--dataset", choices=tuple(DATASETS), help="the data set (default: the run's, from its run.json; else cifar10)"
    )
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--batch-size", type=_positive_int, default=500, help="images per batch")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="classify image files with a checkpoint")
    r.add_argument("checkpoint", help="any file train writes: a checkpoint, or weights (.pth, .safetensors)")
    r.add_argument("images", nargs="+")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--top", type=_positive_int, default=3, help="classes to show per image")
    r.add_argument("--tta", action="store_true", help="average with the mirrored image")
    r.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="where the data is, its size and class counts, and decode time")
    i.add_argument("--data", help="folder with the data set (default: $FASTCIFAR_DATA, then ./data)")
    i.add_argument("--download", action="store_true", help="fetch CIFAR-10 if it is not there")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"fastcifar: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
