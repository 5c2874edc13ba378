# One set of commands for people, CI (.ci/run) and the README.
#   make demo   install, then run the full local pipeline on the embedded default
#   make test   install, then run the test suite
# Everything installs into ./.venv; state goes to ./state (override: FINETUNE_PHI__STATE_DIR).

PYTHON ?= python3
VENV ?= .venv
# Pins for this CPU machine kind; `make install CONSTRAINTS=` on a GPU machine.
CONSTRAINTS ?= constraints.txt
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m 'not slow'"`.
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINT_FLAG := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: install demo test test-fast lint typecheck check clean-state help

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

install: $(STAMP)  ## create .venv and install the project (idempotent)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off $(CONSTRAINT_FLAG) -e '.[dev]'
	touch $@

demo: install  ## run the full local pipeline on the embedded default (tiny Phi-3, synthetic chat data)
	$(BIN)/finetune-phi demo

# pytest exits 5 when it collected no tests (a wrong path, a broken conftest, a -k that matches
# nothing): that is a broken suite, never a pass, so it fails here with its own message.
RUN_PYTEST = $(BIN)/python -m pytest $(1); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: pytest collected no tests: failing on purpose" >&2; exit 1; fi; \
	exit $$status

test: install  ## run the test suite (what CI runs)
	@$(call RUN_PYTEST,$(PYTEST_ARGS))

test-fast: install  ## the suite without the slow tier
	@$(call RUN_PYTEST,-m 'not slow' $(PYTEST_ARGS))

lint: install  ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install  ## mypy (configured in pyproject.toml)
	$(BIN)/mypy

check: lint typecheck test  ## everything CI cares about

clean-state:  ## stop the local endpoint, delete the state folder; safe, the demo rebuilds it
	-test -x $(BIN)/finetune-phi && $(BIN)/finetune-phi endpoint stop
	rm -rf $${FINETUNE_PHI__STATE_DIR:-state}
