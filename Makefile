# Two commands for a new user: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

VIEWER := streamtomo/app/viewer/static/index.html
VIEWER_SOURCES := viewer/package-lock.json viewer/index.html viewer/vite.config.ts $(wildcard viewer/src/*.ts* viewer/src/*/*.ts* viewer/src/*.css)

.PHONY: demo test viewer clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,hsds]'
	touch $(STAMP)

# The viewer page (React + @h5web/lib, built with vite): needs Node 20.19+ (or 22.12+) and npm.
$(VIEWER): $(VIEWER_SOURCES)
	npm ci --prefix viewer --no-audit --no-fund
	npm run build --prefix viewer

viewer: $(VIEWER)

demo: $(STAMP) $(VIEWER)
	$(BIN)/streamtomo demo --out out/demo.nxs $(ARGS)

test: $(STAMP) $(VIEWER)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache viewer/node_modules streamtomo/app/viewer/static
