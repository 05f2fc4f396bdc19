# dreadpi: `sudo make demo` shows the appliance working, `make test` proves it (as root, as CI runs it).
# Both set up what they need from a fresh clone: a venv with the controller tools, and simulated Pis.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-local test lint bench bench-fleet deb clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# The appliance: one simulated Pi, deployed with the playbooks and the example inventory (needs root).
demo: $(VENV)/.installed
	$(PY) tools/demo_appliance.py

# The control program alone, no root, nothing installed: a few cycles on sim relays.
demo-local:
	$(PYTHON) tools/demo_local.py

lint: $(VENV)/.installed
	$(PY) -m ruff check dreadpi tests tools roles
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/ansible-lint -q

test: lint
	$(PY) -m pytest

bench:
	$(PYTHON) tools/bench.py

bench-fleet: $(VENV)/.installed
	$(PY) tools/bench_fleet.py

# dreadpi_<version>_all.deb in build/, reproducibly; needs only python3 (dpkg-deb is used when present).
deb:
	$(PYTHON) packaging/build_deb.py

clean:
	rm -rf $(VENV) build *.egg-info
