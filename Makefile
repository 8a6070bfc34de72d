# Two entry points for a fresh machine: `make run` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The sandbox confines generated code's file access with bubblewrap: installed here when we are root
# with apt-get and it is missing (CI's fresh Debian machine); elsewhere this does nothing.
sandbox-deps:
	@if ! command -v bwrap >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing bubblewrap (sandbox confinement)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } || \
		echo "warning: could not install bubblewrap; the sandbox falls back to its own mount namespace (root)"; \
	fi

run: $(VENV)/.installed
	$(PY) -m reasonlab.cli models setup smollm2-135m-instruct
	$(PY) -m flows.concept_sft

test: $(VENV)/.installed sandbox-deps
	$(PY) -m pytest -q -rs tests

# A local Prefect server whose UI works (PREFECT_UI_API_URL set) + a loopback file server for the runs' pictures
server: $(VENV)/.installed
	$(PY) -m deployments.server

# Against $$PREFECT_API_URL: pools cpu/gpu, the gpu tag limit, blocks (idempotent), then every deployment
deploy: $(VENV)/.installed
	$(PY) -m deployments.setup
	$(PY) -m deployments.deploy --all

.PHONY: install sandbox-deps run test deploy server
