# fastcifar's named targets. `make test` and `make demo` work on a fresh machine: they create .venv,
# install the pinned dependencies, build the wheel and install that wheel (as users get it).
# `make lint` runs every format and lint gate; CI (.ci/run) runs it before `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
SHARED ?= ../shared/datasets
DATA ?= data
export FASTCIFAR_DATA ?= $(abspath $(DATA))
# torch-sys builds against the venv's torch; maturin and cargo find that python through the venv.
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
# The Python that pyo3 builds for, the same for `make dev`, clippy and maturin (so none rebuilds the others').
export PYO3_PYTHON := $(PY)
TORCH_LIB = $(shell $(PY) -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
PYTEST_ARGS ?=
# What `make test-fast` leaves out: the tests that start torchrun, other Python processes or a notebook kernel.
FAST_MARKS := not slow and not torchrun and not subprocess and not notebook

# `make dev`: the quick loop. Builds the extension straight into python/fastcifar/ (git-ignored), so
# `cd tests && PYTHONPATH=../python ../.venv/bin/python -m pytest ...` runs the tree without a wheel.
.PHONY: dev venv wheel install data lint test test-fast test-rust test-python demo bench bench-data bench-loader bench-train bench-dist device-bundle clean

$(VENV)/.ready: requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.ready

dev: venv
	cargo build --release --features python --quiet
	cp $${CARGO_TARGET_DIR:-target}/release/libfastcifar.so python/fastcifar/_native.abi3.so

# maturin builds a linux-tagged wheel; auditwheel then checks it against the manylinux policies and
# sets the tag they allow. libtorch's libraries (libtorch*.so, libc10*.so) are left out: the installed
# torch provides them (fastcifar/__init__.py imports torch first). Anything else that needed grafting
# would fail here (`--patcher none` may not patch), so the wheel never carries a copied library.
# The wheel is a file target: `make test` after `make demo` (or a second `make test`) reuses the wheel
# and its installation when no source changed. The stamp stands for the wheel (its name carries the
# platform tag, known only once built); it depends on everything that goes into the wheel.
WHEEL_SOURCES := Cargo.toml Cargo.lock build.rs pyproject.toml README.md LICENSE \
	$(shell find src csrc python -type f -not -name '*.so' -not -name '*.pyc' 2>/dev/null)
WHEEL_STAMP := dist/.built
INSTALL_STAMP := $(VENV)/.fastcifar-installed

$(WHEEL_STAMP): $(WHEEL_SOURCES) $(VENV)/.ready
	rm -rf dist
	$(VENV)/bin/maturin build --release --quiet --compatibility linux -o dist/raw -i $(PY)
	$(VENV)/bin/auditwheel repair --patcher none --exclude 'libtorch*.so' --exclude 'libc10*.so' -w dist dist/raw/fastcifar-*.whl
	rm -rf dist/raw
	touch $@

wheel: $(WHEEL_STAMP)

$(INSTALL_STAMP): $(WHEEL_STAMP)
	$(PY) -m pip install -q --force-reinstall --no-deps dist/fastcifar-*.whl
	touch $@

install: $(INSTALL_STAMP)

# Real CIFAR-10 in both official layouts and archives, built from ../shared/datasets (never committed).
$(DATA)/.ready:
	@if [ -f $(SHARED)/build_cifar10.py ]; then $(PY) $(SHARED)/build_cifar10.py $(DATA) >/dev/null && touch $@; \
	else echo "no $(SHARED): tests on real data will be skipped"; fi

data: venv $(DATA)/.ready

# cargo test needs no Python at run time, but its build does: torch-sys links the venv's torch.
# The release profile and tch's python-extension feature are the wheel's (and `make dev`'s), so the
# test build reuses their torch-sys (the libtorch bindings, minutes of C++) instead of compiling it
# again for the test profile; only the fastcifar crate is compiled for the tests.
test-rust: venv
	LD_LIBRARY_PATH=$(TORCH_LIB) cargo test --release --features tch/python-extension --quiet

# Runs from tests/ so that `import fastcifar` is the installed wheel, not python/ in the tree;
# tests/test_wheel.py inspects that wheel file too.
test-python: install data
	cd tests && FASTCIFAR_WHEEL="$$(ls $(CURDIR)/dist/fastcifar-*.whl)" $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: test-rust test-python

# The quick loop: the tree's own build (make dev), without the tests that start torchrun, other
# Python processes or a notebook kernel.
test-fast: dev data
	cd tests && PYTHONPATH=$(CURDIR)/python $(PY) -m pytest -q -p no:cacheprovider -m "$(FAST_MARKS)" $(PYTEST_ARGS)

# Format and lint gates, all of which must pass. stubtest compares python/fastcifar/_native.pyi with
# the extension that `make dev` built.
lint: dev
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings
	cargo clippy --all-targets --features python --quiet -- -D warnings
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/mypy
	PYTHONPATH=$(CURDIR)/python $(PY) -m mypy.stubtest fastcifar._native --mypy-config-file pyproject.toml \
		--allowlist .ci/stubtest-allowlist.txt

# The main job: train, evaluate and save on CIFAR-10, sized for a CPU (about a minute); the command
# it prints at the end runs the full seed recipe on a GPU.
demo: install data
	$(PY) -m fastcifar info --data $(FASTCIFAR_DATA)
	$(PY) -m fastcifar train --data $(FASTCIFAR_DATA) --model small_cnn --epochs 3 --subset 10000 --scheduler onecycle --lr 5e-3 --out runs/demo

bench-data: install data
	$(PY) benches/bench_data.py --data $(FASTCIFAR_DATA)

bench-loader: install data
	$(PY) benches/bench_loader.py --data $(FASTCIFAR_DATA)

bench-train: install data
	$(PY) benches/bench_train_cpu.py --data $(FASTCIFAR_DATA)

bench-dist: install data
	$(PY) benches/bench_distributed.py --data $(FASTCIFAR_DATA)

bench: bench-data bench-loader bench-train bench-dist

# For a GPU machine without cargo: the wheel and the data source, to carry (benches/device_run.sh);
# and the reference of `device_run.sh recipe94`, the airbench package as published on the package
# index (never vendored), as a wheel built from its sdist (pure Python).
device-bundle: wheel
	rm -rf .device && mkdir -p .device
	cp dist/fastcifar-*.whl $(SHARED)/cifar10-jpeg.tar.gz $(SHARED)/build_cifar10.py .device/
	$(PY) -m pip wheel -q --no-deps -w .device airbench==0.1.8 || echo "airbench not fetched: recipe94 will skip its row"

clean:
	rm -rf dist target $(VENV) $(DATA) .mypy_cache .ruff_cache
