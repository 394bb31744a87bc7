"""The .pyi stubs describe the native module completely, so help() and editors see everything."""

import ast
import os

import fastcifar
from fastcifar import _native

STUB = os.path.join(os.path.dirname(fastcifar.__file__), "_native.pyi")


def test_stub_covers_every_public_name_and_method():
    tree = ast.parse(open(STUB).read())
    top = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    top |= {t.target.id for t in tree.body if isinstance(t, ast.AnnAssign)}
    public = {n for n in dir(_native) if not n.startswith("_")} | {"__version__"}
    assert public - top == set(), f"missing from {STUB}: {public - top}"
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        stubbed = {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}
        stubbed |= {a.target.id for a in cls.body if isinstance(a, ast.AnnAssign)}
        # An exception class inherits BaseException's members, as its stub does from its bases.
        real = {m for m in dir(getattr(_native, cls.name)) if not m.startswith("_")} - set(dir(BaseException))
        assert real - stubbed == set(), f"{cls.name} lacks stubs for {real - stubbed}"


def test_public_api_has_docstrings():
    for obj in (
        fastcifar.CIFAR10,
        fastcifar.DataLoader,
        fastcifar.Trainer,
        fastcifar.Trainer.fit,
        fastcifar.Trainer.evaluate,
        fastcifar.models.ImageClassifier,
        fastcifar.models.resnet18,
        fastcifar.optim.Adam,
        fastcifar.transforms.RandomCrop,
        fastcifar.plot.show_predictions,
        fastcifar.Dataset.from_numpy,
        fastcifar.ImageFolder,
    ):
        assert obj.__doc__ and len(obj.__doc__.strip()) > 10, obj
