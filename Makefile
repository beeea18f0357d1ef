# The two commands of the README: `make run` and `make test`. Both create .venv from the
# pinned lock (requirements.lock) when it is missing.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench venv clean-cache

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

# Reproduce every experiment at quick scale, then write the HTML report (runs/report.html).
run: $(STAMP)
	$(BIN)/ictl reproduce --root runs

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean-cache:
	rm -rf .cache/jax
