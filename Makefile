# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing and
# install the exact versions of requirements/test.txt (the lock), then the project itself without resolving.
#
#   make demo         a real job on the built-in emulator (no key, no network)
#   make test         ruff, mypy --strict and the whole suite, on the locked versions (what CI runs)
#   make test-oldest  the fast suite with every runtime dependency at its declared lower bound (CI runs it too)
#   make test-latest  the fast suite with the newest release of everything (finds a breaking upstream release)
#   make lock         regenerate the lock files from pyproject.toml (after changing a dependency)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements/test.txt
OLDEST_LOCK := requirements/oldest.txt
FAST := -m "not slow"
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: demo test lint check lock test-oldest test-latest clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) -r $(LOCK)
	$(PY) -m pip install $(PIP_QUIET) --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m asyncbatch demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy asyncbatch
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy asyncbatch

# Lower bounds: a venv of its own from requirements/oldest.txt (runtime deps pinned at pyproject's `>=` bounds).
.venv-oldest/.installed: pyproject.toml $(OLDEST_LOCK)
	rm -rf .venv-oldest && $(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install $(PIP_QUIET) -r $(OLDEST_LOCK)
	.venv-oldest/bin/python -m pip install $(PIP_QUIET) --no-deps -e .
	touch $@

test-oldest: .venv-oldest/.installed
	.venv-oldest/bin/python -m pip freeze | grep -iE '^(anyio|aiohttp|aiosqlite|msgspec|genai-prices|rich|psycopg|psycopg-pool)=='
	.venv-oldest/bin/python -m pytest -q $(FAST)

# Newest releases: resolved afresh on every run, never from the lock.
test-latest:
	test -x .venv-latest/bin/python || $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install $(PIP_QUIET) --upgrade --upgrade-strategy eager -e '.[dev,conformance,postgres]'
	.venv-latest/bin/python -m pip freeze | grep -iE '^(anyio|aiohttp|aiosqlite|msgspec|genai-prices|rich|prometheus-client)=='
	.venv-latest/bin/python -m pytest -q $(FAST)

# uv resolves; pip installs (a fresh machine needs nothing but Python to run the tests).
lock: $(STAMP)
	$(PY) -m pip install $(PIP_QUIET) uv
	$(PY) -m uv pip compile --quiet pyproject.toml --extra dev --extra conformance --extra postgres --python-version 3.11 -o $(LOCK)
	$(PY) requirements/lower_bounds.py > requirements/lower-bounds.txt
	$(PY) -m uv pip compile --quiet pyproject.toml --extra dev --extra postgres --python-version 3.11 \
		--constraint requirements/lower-bounds.txt -o $(OLDEST_LOCK)

clean:
	rm -rf $(VENV) .venv-oldest .venv-latest build *.egg-info .pytest_cache .mypy_cache .ruff_cache
