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
# the driver model, the litmus library through the checker (their one-line summary), then the
# seed study - the five threads answered - which ends the output (report in .run/study/).
# Each part's JSON report feeds the parts' summary; the run fails if any part did.
RUN_OUT := .run
run: $(STAMP)
	@mkdir -p $(RUN_OUT); status=0; \
	rm -rf $(RUN_OUT)/*; echo '$$ vtdsim demo > $(RUN_OUT)/demo.txt'; \
	$(BIN)/vtdsim demo > $(RUN_OUT)/demo.txt || status=1; \
	echo '$$ vtdsim replay examples/legacy-cm-default'; \
	$(BIN)/vtdsim replay examples/legacy-cm-default --json $(RUN_OUT)/replay.json \
	  > $(RUN_OUT)/replay.txt || status=1; tail -n 1 $(RUN_OUT)/replay.txt; \
	echo '$$ vtdsim check litmus/ -q'; \
	$(BIN)/vtdsim check litmus/ -q --json $(RUN_OUT)/check.json || status=1; \
	echo '$$ vtdsim study --brief --out $(RUN_OUT)/study'; \
	$(BIN)/vtdsim study --brief --out $(RUN_OUT)/study || status=1; \
	$(BIN)/python scripts/run_summary.py $(RUN_OUT) || status=1; \
	exit $$status

test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) $(RUN_OUT) build src/*.egg-info .pytest_cache .ruff_cache
