# Quick start: `make demo` (creates .venv, installs, runs the embedded default) and `make test`.
PYTHON     ?= python3
VENV       ?= .venv
# Pinned so pip takes the CPU wheel; override for a GPU host, e.g. TORCH_SPEC="torch==2.13.0+cu128".
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
PIP        := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install -e ".[dev]"
	@touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

demo: $(VENV)/.installed
	$(BIN)/lpm-rt demo --out demo.mp4

test: $(VENV)/.dev
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo.mp4 .pytest_cache
