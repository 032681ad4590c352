# Two commands matter: `make test` and `make serve`. Both set themselves up from nothing
# (`make test` also installs the Debian packages its tests need: `make system`). `make dev`, the
# venv to train and export in, needs only a Python with venv: no root, no Debian packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SERVE_VENV ?= .venv-serve
SERVE_PY := $(SERVE_VENV)/bin/python
MODEL_DIR ?= models/fashion-mnist-lt
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: test lint typecheck pytest serve model dev clean system docs

# Debian packages the tests need (python3-venv, prometheus, nginx, ...): the list is
# scripts/system-packages.txt. Installs only what is missing (root and apt-get needed then);
# otherwise one line says what to install.
system:
	@sh scripts/setup-system.sh

# torch's CPU build. PyPI's plain torch==2.13.0 for Linux x86_64 is the CUDA build (several GB of
# nvidia-* wheels); PyTorch's CPU index names the CPU build 2.13.0+cpu, and a pin with the local
# version can only be met by that wheel: where the index is out of reach and no local copy is
# offered (pip's find-links), the install fails instead of falling back to CUDA. macOS has no CUDA
# build, and its wheels (PyPI's and the CPU index's) carry no local version, hence the plain pin.
# Another build: make dev TORCH_VARIANT=cu128 TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
TORCH_VERSION ?= 2.13.0
TORCH_VARIANT ?= cpu
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
ifeq ($(shell uname -s),Darwin)
TORCH_PIN ?= torch==$(TORCH_VERSION)
else
TORCH_PIN ?= torch==$(TORCH_VERSION)+$(TORCH_VARIANT)
endif
# Only torch comes from that index (--no-deps: its dependencies come from PyPI with the project's),
# and an index out of reach costs one quick retry, not pip's five with back-off.
TORCH_INSTALL = -m pip install -q --no-deps --retries 1 --timeout 15 \
	--extra-index-url $(TORCH_INDEX_URL) "$(TORCH_PIN)"

# Development venv: torch (CPU build) first, so nothing pulls a CUDA build, then the project.
$(VENV)/.installed: pyproject.toml
	@sh scripts/make-venv.sh $(PYTHON) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) $(TORCH_INSTALL)
	$(PY) -m pip install -q -e ".[train,cpu,dev]"
	touch $@

dev: $(VENV)/.installed

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: dev
	$(VENV)/bin/mypy

# The tests need the Debian packages (make runs prerequisites left to right: system first).
pytest: system dev
	$(VENV)/bin/pytest -q

test: system lint typecheck pytest

# Serving venv: no torch, no onnx; only the server and ONNX Runtime (CPU).
$(SERVE_VENV)/.installed: pyproject.toml
	@sh scripts/make-venv.sh $(PYTHON) $(SERVE_VENV)
	$(SERVE_PY) -m pip install -q --upgrade pip
	$(SERVE_PY) -m pip install -q -e ".[cpu]"
	touch $@

serve: $(SERVE_VENV)/.installed
	ELF_MODEL_DIR=$(MODEL_DIR) $(SERVE_VENV)/bin/elf-serve --host $(HOST) --port $(PORT)

# The documentation site (docs/, mkdocs.yml) into site/: offline and strict (a broken link or a
# page missing from the navigation fails). tests/docs/test_site.py runs the same build.
docs: dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf site $(VENV) $(SERVE_VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache

# Reproduce the bundled model from scratch: the best setting of the accuracy benchmark
# (docs/benchmarks/accuracy.md): a standard network (balanced softmax, final exit only), then
# `elf-export retrofit` adds five trained exits with 64-channel heads (the backbone unchanged),
# verifies and calibrates on the validation split. One torch thread in both, so that the same
# seed gives the same model.
MODEL_RUN ?= runs/fashion-mnist-lt-standard-bs
MODEL_TRAIN_ARGS ?= --method standard --loss balanced_softmax --epochs 30 --seed 0 --eval-every 5 \
	--threads 1
MODEL_RETROFIT_ARGS ?= --exits 5 --head-width 64 --epochs 15 --seed 0 --threads 1
model: dev
	$(VENV)/bin/elf-train --dataset fashion-mnist-lt --imbalance-ratio 100 --arch resnet32 $(MODEL_TRAIN_ARGS) \
		--out $(MODEL_RUN) --resume
	$(VENV)/bin/elf-export --checkpoint $(MODEL_RUN)/checkpoint.pt --out $(MODEL_RUN)/export
	$(VENV)/bin/elf-export retrofit --onnx $(MODEL_RUN)/export/full.onnx --out $(MODEL_DIR) \
		--name fashion-mnist-lt --version 1 --dataset fashion-mnist-lt --imbalance-ratio 100 $(MODEL_RETROFIT_ARGS)
	@echo "model written to $(MODEL_DIR) (from $(MODEL_RUN)/checkpoint.pt)"
