# Set-up and entry points. `make study` runs the main job, `make test` the whole test suite;
# each creates .venv and installs what it needs first.
#
# TORCH_SPEC picks the PyTorch build. The default pin resolves to the local CPU wheel on the
# project's machines and never pulls CUDA packages; elsewhere choose your own, for example
#   make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
# or install torch into .venv yourself first (any build within pyproject's range is kept).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
STUDY ?= gridsearch
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install study test test-fast test-lowest typecheck system-deps perf clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "GradNorm Bench needs Python >= 3.11; $(PYTHON) is " + sys.version.split()[0] + ": run make with PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test,data]"
	touch $(STAMP)

install: $(STAMP)

# The main job: a real study on the embedded default store (results/), then its report (reports/).
study: install
	$(BIN)/bench run --study $(STUDY)
	$(BIN)/bench compare --study $(STUDY)

# Every test, the slow end-to-end ones included (plain `pytest` runs the fast ones only).
test: install system-deps
	$(BIN)/python -m pytest -m "slow or not slow"

test-fast: install
	$(BIN)/python -m pytest

# mypy on the package, with pyproject.toml's settings (`make test` runs it too, as a slow test).
typecheck: install
	$(BIN)/python -m mypy

# The fast tests again in $(LOWEST_VENV), on the oldest release of each dependency that
# pyproject.toml allows (tests/lowest-versions.txt): a floor that nothing tests is a guess.
LOWEST_VENV ?= .venv-lowest
test-lowest:
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(LOWEST_VENV)/bin/python -m pip install --quiet --only-binary :all: -c tests/lowest-versions.txt -e ".[test,data]"
	$(LOWEST_VENV)/bin/python -m pytest -p no:cacheprovider

# System packages some tests use: headless Chromium (report test), PostgreSQL (multi-worker
# test) and Fashion-MNIST (multifashion problem). Installed with apt when running as root on
# Debian; otherwise those tests are skipped (CI requires them).
SYSTEM_PACKAGES := chromium postgresql dataset-fashion-mnist
system-deps:
	@if command -v chromium >/dev/null && command -v pg_ctlcluster >/dev/null \
		&& [ -d /usr/share/datasets/fashion-mnist ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $(SYSTEM_PACKAGES) with apt-get"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	else \
		echo "not root or no apt-get: tests that need $(SYSTEM_PACKAGES) will be skipped"; \
	fi

perf: install
	$(BIN)/bench perf

clean:
	rm -rf $(VENV) $(LOWEST_VENV) results reports/*/ .pytest_cache
