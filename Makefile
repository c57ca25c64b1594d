# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check venv clean

$(STAMP): pyproject.toml requirements/constraints.txt scripts/bootstrap.sh
	PYTHON=$(PYTHON) bash scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dsel run examples/demo/dataselection.yaml --storage examples/demo/out/artifacts --output examples/demo/out/selection.json

# Lint, type check and import contracts (scripts/check.sh) first, then the tests.
test: check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(STAMP)
	bash scripts/check.sh $(VENV)

clean:
	rm -rf $(VENV) examples/demo/out .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
