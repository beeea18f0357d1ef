# The two commands of the README: `make run` and `make test`. Both create .venv from the
# pinned lock (requirements.lock) when it is missing.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# pytest-xdist processes for `make test` (one per core of the 2-core CI machine)
TEST_WORKERS ?= 2
.PHONY: run test bench bench-peer venv clean-cache

# The pinned lock is installed with uv (a build tool only, pinned here): on a fresh machine with no
# package cache it installed the lock in 78 s where pip took 7 min 48 s (measured side by side on the
# 2-core CI-like machine). pip installs it when uv cannot be had.
UV_VERSION := 0.13.8
# uv, unlike pip, installs no bytecode, and with PYTHONDONTWRITEBYTECODE set (as on the 2-core CI-like
# machine) every Python process then compiled jax's, flax's, optax's … sources anew: 7.8 → 2.8 CPU-s to
# import the stack. One import of every experiment (what `ictl` runs import), of matplotlib and of the
# test runner writes the bytecode of what runs and tests import (22 CPU-s once; uv's --compile-bytecode,
# everything installed, took 53). test_multiprocess + test_config_cli + test_gpicl_data +
# test_multidevice, their subprocesses included: 161 → 79 CPU-s.
export PRECOMPILE := import matplotlib.pyplot, pytest, xdist; from ictl import cli; [cli.load_experiment(n) for n in cli.experiment_names()]
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@if $(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION); then \
	  $(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock && \
	  $(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e . ; \
	else \
	  $(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock && \
	  $(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e . ; \
	fi
	@env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -c "$$PRECOMPILE"
	@touch $(STAMP)

venv: $(STAMP)

# Reproduce every experiment at quick scale, then write the HTML report (runs/report.html).
# RUN_JOBS experiments run at once, each in its own process (one per core of the 2-core machine:
# compiling uses one core, so one experiment at a time left the other idle much of the time).
RUN_JOBS ?= 2
run: $(STAMP)
	$(BIN)/ictl reproduce --root runs --jobs $(RUN_JOBS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

# ictl vs the PyTorch original side by side (docs/benchmarks_peer.md). The PyTorch side lives in its
# own bench-only venv (torch CPU + transformers), never a dependency of ictl.
PEER := .venv-peer
$(PEER)/.stamp:
	@test -x $(PEER)/bin/python || $(PY) -m venv $(PEER)
	$(PEER)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 transformers==5.24.0 numpy
	@touch $@

bench-peer: $(STAMP) $(PEER)/.stamp
	$(BIN)/python -m bench.bench_peer

clean-cache:
	rm -rf .cache/jax
