# Two commands matter: `make test` and `make serve`. Both set themselves up from nothing
# (`make test` also installs the Debian packages its tests need: `make system`).
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

# Development venv: torch (CPU build) first, so nothing pulls a CUDA build, then the project.
$(VENV)/.installed: pyproject.toml | system
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,cpu,dev]"
	touch $@

dev: system $(VENV)/.installed

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: dev
	$(VENV)/bin/mypy

pytest: dev
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

# Serving venv: no torch, no onnx; only the server and ONNX Runtime (CPU).
$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
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

# Reproduce the bundled model from scratch: train the best ELF setting of the accuracy benchmark
# (docs/benchmarks/accuracy.md), export, verify and calibrate on the validation split.
MODEL_RUN ?= runs/fashion-mnist-lt
MODEL_TRAIN_ARGS ?= --method elf --loss balanced_softmax --epochs 30 --seed 0 --eval-every 5
model: dev
	$(VENV)/bin/elf-train --dataset fashion-mnist-lt --imbalance-ratio 100 --arch resnet32 $(MODEL_TRAIN_ARGS) \
		--out $(MODEL_RUN) --resume
	$(VENV)/bin/elf-export --checkpoint $(MODEL_RUN)/checkpoint.pt --out $(MODEL_DIR) --version 1
	@echo "model written to $(MODEL_DIR) (from $(MODEL_RUN)/checkpoint.pt)"
