# One-command entry points. `make demo` and `make test` each install first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# checkov (tests/unit/test_deploy.py) pins boto3 and packaging below pyproject.toml's pins: it gets a venv of its own
TOOLS       := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP) $(TOOLS_STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "install: $(PYTHON) not found (Python >= 3.11 is required)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[all]'
	@bash scripts/install-system-deps.sh
	@touch $(STAMP)

$(TOOLS_STAMP): deploy/requirements-checks.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "install: $(PYTHON) not found (Python >= 3.11 is required)"; exit 1; }
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --progress-bar off -r deploy/requirements-checks.txt
	@touch $(TOOLS_STAMP)

demo: install
	$(BIN)/whaleid demo

# test: both lanes, tests/unit/ (no servers, no training) and tests/integration/ (the embedded stack, training, end
# to end); test-fast: the unit lane alone, a few minutes. pytest's exit 5 ("no tests collected") is a failure.
test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (this is a failure)" >&2; exit 1; fi; exit $$rc

test-fast: install
	@$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests (this is a failure)" >&2; exit 1; fi; exit $$rc

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check services training tests bench model_repo
	$(BIN)/python -m pytest -q tests/unit/test_import_graph.py  # no import circles

clean:
	rm -rf $(VENV) $(TOOLS) .whaleid runs build *.egg-info
