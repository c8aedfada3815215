# `make run` and `make test` set up on a fresh machine: uv (from PyPI if missing), then uv sync.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
PYTEST_ARGS ?=

.PHONY: setup run test lint bench

setup:
	@command -v uv >/dev/null 2>&1 || test -x "$(UV)" || python3 -m pip install --quiet uv || python3 -m pip install --quiet --user uv
	@$(UV) sync --all-extras --quiet

run: setup
	$(UV) run fnhost serve

test: setup
	$(UV) run pytest $(PYTEST_ARGS)

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy core/fnhost plugins/*/fnhost_*

bench: setup
	$(UV) run python bench/run.py
