# The README's two set-up commands are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# The main job on the bundled default: the guided demo, the bundled recording replayed against
# the driver model, and the litmus library through the checker.
run: $(STAMP)
	$(BIN)/vtdsim demo
	$(BIN)/vtdsim replay examples/legacy-cm-default
	$(BIN)/vtdsim check litmus/

test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
