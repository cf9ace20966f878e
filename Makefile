# The two commands a newcomer needs are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Generate a dataset from the built-in emulator, then query it with DuckDB.
demo: $(STAMP)
	$(BIN)/distillery run examples/emulator.yaml --emulator --output out/demo
	$(BIN)/distillery query --data out/demo \
	  "SELECT teacher_model_version, count(*) AS samples, round(avg(completion_tokens)) AS avg_tokens FROM samples GROUP BY ALL"

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .mypy_cache .ruff_cache
