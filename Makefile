# The README's commands. `.ci/run` calls `make test`, so the two never drift.
# `make test PYTHON=/path/to/python3.13` runs everything on another interpreter, in its own
# virtualenv (.venv-3.13): two Pythons never share one. Without PYTHON= it is python3 in .venv.
ifeq ($(origin PYTHON),undefined)
PYTHON := python3
VENV   := .venv
else
VENV   := .venv-$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
endif
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast system-deps lint typecheck docs pytest pytest-quick bench clean

$(STAMP): setup.cfg pyproject.toml
	@test -n "$(VENV)" -a "$(VENV)" != ".venv-" || { echo "PYTHON=$(PYTHON) does not run"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools  # not in a 3.12+ venv: the packaging test builds with it
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run the example app offline on the bundled Auth0 and Keen emulators: http://localhost:3000
demo: $(STAMP)
	$(BIN)/python -m example_app

## Install everything the tests need, then lint, type-check and run the whole suite.
test: $(STAMP) system-deps lint typecheck docs pytest

## The unit tests only (pure logic, real SQLite files, no servers): well under 30 s.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" tests/unit

system-deps:
	bash scripts/install-test-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

## Build the documentation site (strict: a broken link between pages fails).
docs: $(STAMP)
	$(BIN)/mkdocs build --quiet

pytest: $(STAMP) system-deps
	$(BIN)/pytest

bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

## The unit, integration and emulator tests only (no browser, no multi-process system tests).
pytest-quick: $(STAMP) system-deps
	$(BIN)/pytest tests/unit tests/integration tests/emulators

clean:
	rm -rf .venv .venv-* build dist site *.egg-info
