"""The version has one source, and the built wheel is one the package index would accept.

The wheel checks read the file named by $FASTCIFAR_WHEEL (`make test` sets it to the wheel that it
installs); without it they skip, since a source tree has no wheel to inspect.
"""

import email.parser
import os
import re
import subprocess
import sys
import zipfile

import pytest

import fastcifar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The libraries of manylinux's policies that the extension may link (PEP 600 / auditwheel), and
# libtorch's own, which the installed torch provides.
SYSTEM_LIBS = {
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}
TORCH_LIB = re.compile(r"^lib(torch|c10)[A-Za-z0-9_]*\.so$")


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        package = f.read().split("[package]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version\s*=\s*"([^"]+)"', package, re.M).group(1)


def test_the_version_is_cargos():
    assert fastcifar.__version__ == cargo_version()


@pytest.fixture(scope="module")
def wheel():
    path = os.environ.get("FASTCIFAR_WHEEL")
    if not path:
        pytest.skip("no wheel to inspect: set FASTCIFAR_WHEEL (make test does)")
    assert os.path.isfile(path), f"FASTCIFAR_WHEEL={path} is not a file"
    return path


def _dist_info(zf, name):
    (member,) = [m for m in zf.namelist() if re.fullmatch(r"fastcifar-[^/]+\.dist-info/" + name, m)]
    return zf.read(member).decode()


def test_the_wheel_is_tagged_manylinux_abi3(wheel):
    name, version, py, abi, plat = os.path.basename(wheel)[: -len(".whl")].split("-")
    assert (name, version, py, abi) == ("fastcifar", cargo_version(), "cp39", "abi3")
    assert re.fullmatch(r"manylinux_2_\d+_(x86_64|aarch64)", plat), plat
    with zipfile.ZipFile(wheel) as zf:
        info = email.parser.Parser().parsestr(_dist_info(zf, "WHEEL"))
    assert info.get_all("Tag") == [f"{py}-{abi}-{plat}"]
    assert info["Root-Is-Purelib"] == "false"


def test_the_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta = email.parser.Parser().parsestr(_dist_info(zf, "METADATA"))
        license_text = _dist_info(zf, "licenses/LICENSE")
    assert meta["Name"] == "fastcifar" and meta["Version"] == cargo_version()
    requires = meta.get_all("Requires-Dist")
    assert f"torch=={fastcifar.TORCH_VERSION}" in requires, requires
    assert not [r for r in requires if "extra == 'dev'" in r], "the dev tools live in requirements-dev.txt"
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    assert license_text.startswith("MIT License") and "fastcifar developers" in license_text
    assert meta["Requires-Python"] == ">=3.10"
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Rust" in classifiers and "Typing :: Typed" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Repository", "Changelog"} <= set(urls), urls


def test_the_wheel_links_libtorch_without_bundling_it(wheel, tmp_path):
    elftools = pytest.importorskip("elftools.elf.elffile")
    with zipfile.ZipFile(wheel) as zf:
        members = zf.namelist()
        (so,) = [m for m in members if m.endswith(".so")]
        assert so == "fastcifar/_native.abi3.so", members
        assert not [m for m in members if ".libs/" in m], "auditwheel grafted libraries into the wheel"
        zf.extract(so, tmp_path)
    with open(tmp_path / so, "rb") as f:
        dynamic = elftools.ELFFile(f).get_section_by_name(".dynamic")
        needed = {t.needed for t in dynamic.iter_tags() if t.entry.d_tag == "DT_NEEDED"}
        rpaths = [t for t in dynamic.iter_tags() if t.entry.d_tag in ("DT_RPATH", "DT_RUNPATH")]
    torch_libs = {n for n in needed if TORCH_LIB.match(n)}
    assert torch_libs, f"the extension should link libtorch (found {sorted(needed)})"
    assert needed - torch_libs <= SYSTEM_LIBS, f"links a library outside manylinux: {sorted(needed - SYSTEM_LIBS)}"
    assert not rpaths, "an rpath would point into the build machine's torch"


@pytest.mark.subprocess
def test_the_wheel_imports(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
    code = "import fastcifar, sys; print(fastcifar.__file__); print(fastcifar.__version__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    where, version = r.stdout.split()
    assert where.startswith(str(tmp_path / "site")) and version == cargo_version()
