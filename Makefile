# Two entry points for a fresh machine: `make run` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m reasonlab.cli models setup smollm2-135m-instruct
	$(PY) -m flows.concept_sft

test: $(VENV)/.installed
	$(PY) -m pytest -q -rs tests

# A local Prefect server whose UI works (PREFECT_UI_API_URL set) + a loopback file server for the runs' pictures
server: $(VENV)/.installed
	$(PY) -m deployments.server

# Against $$PREFECT_API_URL: pools cpu/gpu, the gpu tag limit, blocks (idempotent), then every deployment
deploy: $(VENV)/.installed
	$(PY) -m deployments.setup
	$(PY) -m deployments.deploy --all

.PHONY: install run test deploy server
