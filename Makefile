# The two set-up commands of the README: `make demo` (main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench clean

install: $(VENV)/.installed

# Exact versions from constraints.txt (the package itself accepts the ranges in pyproject.toml).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/tdaf demo --out runs/demo --overwrite

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
