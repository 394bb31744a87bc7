# fastcifar's named targets. `make test` and `make demo` work on a fresh machine: they create .venv,
# install the pinned dependencies, build the wheel and install that wheel (as users get it).
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
TORCH_LIB = $(shell $(PY) -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
PYTEST_ARGS ?=

# `make dev`: the quick loop. Builds the extension straight into python/fastcifar/ (git-ignored), so
# `cd tests && PYTHONPATH=../python ../.venv/bin/python -m pytest ...` runs the tree without a wheel.
.PHONY: dev venv wheel install data test test-rust test-python demo bench bench-data bench-loader bench-train bench-dist device-bundle clean

$(VENV)/.ready: requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.ready

dev: venv
	PYO3_PYTHON=$(PY) cargo build --release --features python --quiet
	cp $${CARGO_TARGET_DIR:-target}/release/libfastcifar.so python/fastcifar/_native.abi3.so

wheel: venv
	rm -rf dist
	$(VENV)/bin/maturin build --release --quiet -o dist -i $(PY)

install: wheel
	$(PY) -m pip install -q --force-reinstall --no-deps dist/fastcifar-*.whl

# Real CIFAR-10 in both official layouts and archives, built from ../shared/datasets (never committed).
$(DATA)/.ready:
	@if [ -f $(SHARED)/build_cifar10.py ]; then $(PY) $(SHARED)/build_cifar10.py $(DATA) >/dev/null && touch $@; \
	else echo "no $(SHARED): tests on real data will be skipped"; fi

data: venv $(DATA)/.ready

test-rust: venv
	LD_LIBRARY_PATH=$(TORCH_LIB) cargo test --quiet

# Runs from tests/ so that `import fastcifar` is the installed wheel, not python/ in the tree.
test-python: install data
	cd tests && $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: test-rust test-python

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

# For a GPU machine without cargo: the wheel and the data source, to carry (benches/device_run.sh).
device-bundle: wheel
	rm -rf .device && mkdir -p .device
	cp dist/fastcifar-*.whl $(SHARED)/cifar10-jpeg.tar.gz $(SHARED)/build_cifar10.py .device/
	# The airbench94 reference for `device_run.sh recipe94`, from PyPI as published (not vendored).
	$(PY) -m pip wheel -q --no-deps -w .device airbench==0.1.8 || echo "airbench not fetched: recipe94 will skip its row"

clean:
	rm -rf dist target $(VENV) $(DATA)
