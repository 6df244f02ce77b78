# The two set-up commands of the README: `make demo` (main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench clean timm-sdist timm-tests

install: $(VENV)/.installed

# Exact versions from constraints.txt (the package itself accepts the ranges in pyproject.toml).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Seeds 100-103: the recipe was chosen on seeds 0-3, so the headline run is on seeds that
# took no part in choosing it.
demo: install
	$(VENV)/bin/tdaf demo --seeds 100-103 --out runs/demo --overwrite

test: install
	$(PY) -m pytest tests

# timm's own model tests (tests/test_models.py of timm's source distribution, the version
# pinned in constraints.txt) on the tdaf_ models registered in timm: forward, backward, cfg
# and features markers, every model (about 11 minutes on 2 CPU cores). `make test` runs the
# quick part (cfg on every model) when TDAF_TIMM_SDIST names the file.
TIMM_VERSION := $(shell sed -n 's/^timm==//p' constraints.txt)
TIMM_SDIST ?= build/timm_sdist/timm-$(TIMM_VERSION).tar.gz

timm-sdist: $(TIMM_SDIST)

$(TIMM_SDIST): constraints.txt
	$(PY) -m pip download timm==$(TIMM_VERSION) --no-binary :all: --no-deps -d $(dir $(TIMM_SDIST))

timm-tests: install $(TIMM_SDIST)
	TDAF_TIMM_SDIST=$(TIMM_SDIST) TDAF_TIMM_FULL=1 $(PY) -m pytest tests/test_timm_suite.py -q

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
