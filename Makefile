# dreadpi: `make demo` shows it working, `make test` proves it. Both set up what they need from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

# The control program needs nothing beyond the standard library, so the demo runs straight from the checkout.
demo:
	$(PYTHON) tools/demo_core.py

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

lint: $(VENV)/.installed
	$(PY) -m ruff check dreadpi tests tools

test: lint
	$(PY) -m pytest

bench:
	$(PYTHON) tools/bench.py

clean:
	rm -rf $(VENV) build *.egg-info
