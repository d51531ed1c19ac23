# The two commands (see README): `make demo` and `make test`. Both set up .venv first.
# The first Python 3.11+ that actually runs (pyenv shims may exist for versions not selected).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The bundled sample articles are dated 2026-11-17 to 25; the demo runs at a fixed moment after
# them so it shows the same on any day: on Friday 27 November, Climate Weekly is due (sent) and
# Turkey Unpacked's next issue, for Monday 30, is a draft for the studio.
DEMO_NOW ?= 2026-11-27T10:00:00Z
PYTEST_WORKERS ?= 2

.PHONY: setup demo test lint typecheck unit bench bench-peers bench-worker-libs clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "digest needs Python 3.11 or newer on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/digest --now $(DEMO_NOW) demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --durations=15

bench: setup
	@for script in benchmarks/bench_*.py; do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; \
	done

# digest against rss2email and django-newsletter, in a scratch virtualenv of their own.
PEERS := var/peers
$(PEERS)/bin/r2e:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet 'rss2email==3.14' 'django-newsletter==1.2.1' \
		'sorl-thumbnail==13.4.0'

bench-peers: setup $(PEERS)/bin/r2e
	$(BIN)/python benchmarks/peers.py

# `digest worker` against procrastinate and pgqueuer as the worker process model (#15), in a
# scratch virtualenv of their own: neither is a dependency of digest. Try it smaller with
# WORKER_LIBS_ARGS="--size 100000".
WORKER_LIBS := var/worker-libs
$(WORKER_LIBS)/.installed: pyproject.toml
	$(PYTHON) -m venv $(WORKER_LIBS)
	$(WORKER_LIBS)/bin/python -m pip install --quiet -e . 'procrastinate==3.10.*' \
		'pgqueuer==1.6.*' 'asyncpg==0.32.*' 'jsonschema>=4.23'
	touch $@

bench-worker-libs: $(WORKER_LIBS)/.installed
	$(WORKER_LIBS)/bin/python benchmarks/bench_worker_libs.py $(WORKER_LIBS_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
