# Thin wrappers: every target calls into the project's venv; `make setup` builds it once.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stageflow-installed
# root's copies of the server binaries for the service user (SHARED_BINARIES in deploy/runtime/native.py),
# and the demo's home when the clone sits behind a private directory (SHARED_DEMO in deploy/demo.py)
SHARED_BINARIES := /var/cache/stageflow
SHARED_DEMO     := /var/lib/stageflow-demo

.PHONY: setup system-python demo test check lint docs-freshness release-gate bench clean engine

setup: $(STAMP) system-python

# as root the service runs as the service user, from a system-wide python3 with its venv module
# (deploy/runtime/native.py, service_interpreter): Debian's python3-venv when that is missing
system-python:
	@if [ "$$(id -u)" = 0 ] && ! /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null \
	  && command -v apt-get >/dev/null; then \
	  echo "installing python3-venv (root: the service runs as the service user, from /usr/bin/python3)"; \
	  apt-get install -y -qq python3-venv >/dev/null 2>&1 \
	  || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }; fi

$(STAMP): pyproject.toml app/requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(BIN)/inv demo

# the suite mostly waits on servers and subprocesses: whole files run side by side, one worker
# each (a file's module fixtures and its order stay in one process); TEST_WORKERS=0 runs serially.
# Three on two cores: two left the CPUs idle 15-19% of the run, waiting on servers and SSH
TEST_WORKERS ?= 3
# the release gate runs `make test NO_SETUP=1 BIN=<its venv's bin>` on a snapshot of the commit:
# the venv it judges with is already built, and the snapshot must never build (or re-point) one
test: $(if $(NO_SETUP),,setup)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# a Docker engine for the compose runtime (root): packages, Compose v2, dockerd, local images;
# idempotent, and an engine that already answers is used as it is (.ci/engine-up)
engine:
	bash .ci/engine-up

check: setup lint docs-freshness

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs-freshness: setup
	$(BIN)/inv docs.freshness

release-gate: setup
	$(BIN)/inv release.gate $(if $(REF),--ref $(REF),) $(if $(DB_URL),--db-url $(DB_URL),)

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	$(BIN)/inv dev.down staging.down prod.down || true
	rm -rf .stageflow dist
	if [ "$$(id -u)" = 0 ]; then rm -rf $(SHARED_BINARIES) $(SHARED_DEMO); fi
