"""Command line: ``fastcifar train | evaluate | predict | info`` (also ``python -m fastcifar``).

    fastcifar train --data DIR --model image_classifier --epochs 50 --batch-size 128 --lr 1e-3 \\
                    --device auto --out runs/NAME
    fastcifar train --recipe airbench94 --out runs/a94     # a whole recipe (fastcifar.recipes)
    fastcifar train --recipe airbench94_muon --out runs/m  # its Muon successor: 8 epochs at batch 2000
    fastcifar evaluate runs/NAME/best.pth --data DIR
    fastcifar predict runs/NAME/best.pth cat.png dog.jpg
    fastcifar info --data DIR

The data folder is found from --data, then $FASTCIFAR_DATA, then ./data; ``--download`` fetches
CIFAR-10 when none is there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
MODELS = ("image_classifier", "resnet9", "resnet18", "small_cnn")


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


def find_data(explicit: str | None, download: bool = False) -> str:
    """--data, then $FASTCIFAR_DATA, then ./data; with download, ./data (or --data) is filled."""
    import fastcifar

    candidates = [explicit] if explicit else [os.environ.get("FASTCIFAR_DATA"), "data"]
    for c in candidates:
        if not c:
            continue
        try:
            fastcifar._native.NativeDataset.cifar(c, "cifar10", False)
            return c
        except FileNotFoundError:
            continue
        except ValueError as e:  # the data is there but broken: say so rather than "not found"
            raise SystemExit(f"fastcifar: CIFAR-10 in {c} is unreadable: {e}") from None
    if download:
        root = explicit or "data"
        fastcifar.CIFAR10(root, train=False, download=True)
        return root
    where = explicit or f"$FASTCIFAR_DATA ({os.environ.get('FASTCIFAR_DATA') or 'unset'}) or ./data"
    raise SystemExit(
        f"fastcifar: no CIFAR-10 found in {where}. Put cifar-10-batches-py/ (or -bin/, or the .tar.gz archives) there, "
        f"pass --data DIR, or add --download to fetch it."
    )


def _transforms(train: bool):
    from fastcifar import transforms as T

    if train:
        return T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
    return T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


def cmd_train_recipe(a) -> int:
    """``fastcifar train --recipe NAME``: the recipe's network, optimizer, schedule, augmentation
    and TTA (fastcifar.recipes) through the same Trainer; --epochs and --batch-size override the
    recipe's, and the options the recipe sets itself are refused rather than ignored."""
    import torch

    import fastcifar
    from fastcifar import recipes

    if a.given:
        raise SystemExit(f"fastcifar: {', '.join(a.given)}: not with --recipe {a.recipe} (the recipe sets them)")
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


def cmd_train(a) -> int:
    import torch

    import fastcifar
    from fastcifar import distributed, models, optim, plot

    if a.recipe:
        return cmd_train_recipe(a)
    a.epochs = 50 if a.epochs is None else a.epochs
    a.batch_size = 128 if a.batch_size is None else a.batch_size
    root = find_data(a.data, a.download)
    full_train = fastcifar.CIFAR10(root, train=True, transform=_transforms(True))
    source = full_train.source
    train: fastcifar.Dataset = full_train
    test: fastcifar.Dataset = fastcifar.CIFAR10(root, train=False, transform=_transforms(False))
    if a.subset:
        train = train.subset(range(min(a.subset, len(train))))
    if a.test_subset:
        test = test.subset(range(min(a.test_subset, len(test))))
    torch.manual_seed(a.seed)
    trainloader = fastcifar.DataLoader(train, batch_size=a.batch_size, shuffle=True, seed=a.seed)
    testloader = fastcifar.DataLoader(test, batch_size=max(a.batch_size, 256))
    model = {
        "image_classifier": lambda: models.ImageClassifier(10),
        "resnet9": lambda: models.resnet9(10),
        "resnet18": lambda: models.resnet18(10, cifar_stem=True),
        "small_cnn": lambda: models.small_cnn(10, width=a.width),
    }[a.model]()
    if distributed.launched():  # this rank's shard (--seed is the same on every rank); fit uses it as it is
        trainloader = trainloader.shard(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    steps_per_epoch = len(trainloader)  # the schedule counts this rank's steps
    opt = {
        "adam": lambda: optim.Adam(lr=a.lr, weight_decay=a.weight_decay),
        "adamw": lambda: optim.AdamW(lr=a.lr, weight_decay=a.weight_decay),
        "sgd": lambda: optim.SGD(lr=a.lr, momentum=0.9, nesterov=True, weight_decay=a.weight_decay),
    }[a.optimizer]()
    sched = {
        "plateau": lambda: optim.lr_scheduler.ReduceLROnPlateau(mode="min", patience=3),
        "onecycle": lambda: optim.lr_scheduler.OneCycleLR(max_lr=a.lr, total_steps=a.epochs * steps_per_epoch),
        "cosine": lambda: optim.lr_scheduler.CosineAnnealingLR(T_max=a.epochs),
        "none": lambda: None,
    }[a.scheduler]()
    # Under torchrun every rank runs this; the trainer shards the loaders (--batch-size is per rank)
    # and only rank 0 prints and writes.
    trainer = fastcifar.Trainer(
        model, optimizer=opt, scheduler=sched, device=a.device, amp=a.amp or "off", seed=a.seed, sync_bn=a.sync_bn
    )
    main = trainer.is_main
    if main:
        os.makedirs(a.out, exist_ok=True)
        par = f", data-parallel over {trainer.world_size} processes" if trainer.world_size > 1 else ""
        print(
            f"fastcifar {fastcifar.__version__}: {a.model} ({model.num_parameters():,} parameters) "
            f"on {trainer.device}{par}; "
            f"{len(train)} training / {len(test)} test images from {source}"
        )
    t0 = time.perf_counter()
    history = trainer.fit(
        trainloader, testloader, epochs=a.epochs, checkpoint=os.path.join(a.out, "best.pth"), progress=not a.quiet
    )
    seconds = time.perf_counter() - t0
    report = trainer.evaluate(testloader, progress=False)
    if not main:
        return 0
    trainer.save(os.path.join(a.out, "checkpoint.pth"))
    model.save(os.path.join(a.out, "model_weights.pth"))
    model.save(os.path.join(a.out, "model.safetensors"))
    history.to_json(os.path.join(a.out, "history.json"))
    history.to_csv(os.path.join(a.out, "history.csv"))
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report.to_dict(), f, indent=2)
    saved = [
        "best.pth",
        "checkpoint.pth",
        "model_weights.pth",
        "model.safetensors",
        "history.json",
        "history.csv",
        "report.json",
    ]
    try:
        saved += plot.save_run_plots(trainer, history, report, test, a.out)
    except ImportError as e:
        print(f"(plots skipped: {e})")
    print(f"\n{report}\n\nTrained {len(history)} epochs in {seconds:.1f}s. Wrote {', '.join(saved)} to {a.out}/")
    if not a.full_hint_off and trainer.device == "cpu":
        print(
            "Full seed recipe (50 epochs of ImageClassifier; use a GPU): "
            "fastcifar train --model image_classifier --epochs 50 --batch-size 128 --lr 1e-3 "
            "--device cuda --out runs/full"
        )
    return 0


def _load_trainer(path, device):
    import fastcifar

    try:
        return fastcifar.Trainer.load(path, device=device)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"fastcifar: {e}") from None


def cmd_evaluate(a) -> int:
    import fastcifar

    tr = _load_trainer(a.checkpoint, a.device)
    root = find_data(a.data, False)
    test = fastcifar.CIFAR10(root, train=False, transform=tr.eval_transform or _transforms(False))
    rep = tr.evaluate(fastcifar.DataLoader(test, batch_size=a.batch_size), progress=not a.quiet)
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


def build_parser() -> argparse.ArgumentParser:
    # The package (and so torch and the recipes) is imported already when this module is.
    from fastcifar.recipes import RECIPES

    p = _Parser(prog="fastcifar", description="Fast CIFAR-10 training for PyTorch, with the hot loops in Rust.")
    p.add_argument("--version", action="version", version=f"fastcifar {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train, evaluate and save a model")
    t.add_argument("--data", help="folder with CIFAR-10 (default: $FASTCIFAR_DATA, then ./data)")
    t.add_argument("--download", action="store_true", help="fetch CIFAR-10 if it is not there")
    t.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        help="a whole training recipe (fastcifar.recipes): network, optimizer, schedule, augmentation and TTA; "
        "--model, --width, --lr, --weight-decay, --optimizer, --scheduler and --sync-bn do not apply",
    )
    t.set_defaults(given=[])
    t.add_argument("--model", choices=MODELS, default="image_classifier", action=_Noted, help="built-in network")
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
    e.add_argument("checkpoint")
    e.add_argument("--data", help="folder with CIFAR-10 (default: $FASTCIFAR_DATA, then ./data)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--batch-size", type=_positive_int, default=500, help="images per batch")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="classify image files with a checkpoint")
    r.add_argument("checkpoint")
    r.add_argument("images", nargs="+")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--top", type=_positive_int, default=3, help="classes to show per image")
    r.add_argument("--tta", action="store_true", help="average with the mirrored image")
    r.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="where the data is, its size and class counts, and decode time")
    i.add_argument("--data", help="folder with CIFAR-10 (default: $FASTCIFAR_DATA, then ./data)")
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
