# One-command entry points. `make demo` and `make test` each install first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "install: $(PYTHON) not found (Python >= 3.11 is required)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[all]'
	@bash scripts/install-system-deps.sh
	@touch $(STAMP)

demo: install
	$(BIN)/whaleid demo

test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (this is a failure)" >&2; exit 1; fi; exit $$rc

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check services training tests bench
	$(BIN)/python -m pytest -q tests/test_import_graph.py  # no import circles

clean:
	rm -rf $(VENV) .whaleid runs build *.egg-info
