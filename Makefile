# Quick start: `make demo` (train on the bundled digits data), `make demo-hetero` (the same across
# architectures: CNN -> ViT, ViT -> CNN), `make demo-dense` (detection on generated shapes), `make test`
# (the whole suite) and `make test-fast` (the unit tests of the math and the parts, without the `slow`
# and `e2e` markers: about a minute on 2 CPU cores).
# Each target creates the virtualenv .venv inside the clone on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-hetero demo-dense test test-fast test-full clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/quickstart.py

demo-hetero: $(STAMP)
	$(PY) tools/quickstart.py --hetero

demo-dense: $(STAMP)
	$(PY) tools/quickstart_dense.py

# PYTEST_ARGS: extra pytest options (.ci/run passes --durations=20).
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not e2e" $(PYTEST_ARGS)

test-full: $(STAMP)
	MDISTILLER_E2E=full $(PY) -m pytest -q -m e2e

clean:
	rm -rf output/quickstart output/quickstart_hetero output/quickstart_dense .pytest_cache
