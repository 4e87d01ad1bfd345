# cc-imds developer commands. `make demo` and `make test` are the two the README starts with.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Interpreters: AL2023's Python 3.9 and the newest here. pyenv provides both on the CI machines.
PY39  ?= $(shell command -v python3.9 2>/dev/null || echo $(HOME)/.pyenv/versions/3.9.18/bin/python3.9)
PY313 ?= $(shell command -v python3.13 2>/dev/null || echo $(HOME)/.pyenv/versions/3.13.0/bin/python3.13)
PYTHON ?= python3
VENV := .venv
PIP_FLAGS := --quiet --disable-pip-version-check

help:
	@echo "make demo    set up a virtualenv and run 'cc-imds demo' against the bundled emulator"
	@echo "make test    everything CI runs: lint, the unit/integration matrix (3.9 AL2023 pins, 3.13), e2e"
	@echo "make lint    ruff and mypy"

$(VENV)/demo/.ready: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)/demo
	$(VENV)/demo/bin/pip install $(PIP_FLAGS) .
	touch $@

demo: $(VENV)/demo/.ready
	$(VENV)/demo/bin/cc-imds demo

$(VENV)/py39/.ready: constraints/al2023.txt
	$(PY39) -m venv $(VENV)/py39
	$(VENV)/py39/bin/pip install $(PIP_FLAGS) -c constraints/al2023.txt PyYAML jsonschema Jinja2 MarkupSafe pytest hypothesis
	touch $@

$(VENV)/py313/.ready: constraints/current.txt
	$(PY313) -m venv $(VENV)/py313
	$(VENV)/py313/bin/pip install $(PIP_FLAGS) -c constraints/current.txt PyYAML jsonschema Jinja2 pytest hypothesis ruff mypy types-PyYAML
	touch $@

lint: $(VENV)/py313/.ready
	$(VENV)/py313/bin/ruff check cc_imds tests
	$(VENV)/py313/bin/mypy

test-py39: $(VENV)/py39/.ready
	$(VENV)/py39/bin/python -m pytest -q -p no:cacheprovider

test-py313: $(VENV)/py313/.ready
	$(VENV)/py313/bin/python -m pytest -q -p no:cacheprovider

test: lint test-py39 test-py313

.PHONY: help demo lint test test-py39 test-py313
