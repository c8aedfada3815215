# `make run` and `make test` set up on a fresh machine: uv (from PyPI if missing), then uv sync.
SHELL := /bin/bash
# Recursive (=) so it is looked up again after setup installs uv; pip may put the
# uv script anywhere (pyenv, ~/.local/bin), but `python3 -m uv` finds it either way.
UV = $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=

.PHONY: setup run test lint bench

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv || python3 -m pip install --quiet --user uv
	@$(UV) sync --all-extras --quiet

run: setup
	$(UV) run fnhost serve

test: setup
	$(UV) run pytest $(PYTEST_ARGS)

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy core/fnhost libs/*/fnhost_* plugins/*/fnhost_*

bench: setup
	$(UV) run python bench/run.py
