# One set of commands for people, CI (.ci/run) and the README.
#   make demo   install, then run the full local pipeline on the embedded default
#   make test   install, then run the test suite
# Everything installs into ./.venv; state goes to ./state (override: FINETUNE_PHI__STATE_DIR).

PYTHON ?= python3
VENV ?= .venv
# Pins for this CPU machine kind; `make install CONSTRAINTS=` on a GPU machine.
CONSTRAINTS ?= constraints.txt
# The lock (docs/dependencies.md): every package pinned with its sha256, for this machine kind
# (CPU, Python 3.11), made by `make lock` from pyproject.toml + CONSTRAINTS. `make install LOCK=`
# installs from pyproject's ranges instead (with CONSTRAINTS); `CONSTRAINTS=` turns both off.
LOCK ?= $(if $(CONSTRAINTS),requirements.lock,)
# Extra pip-compile arguments for `make lock`, e.g. LOCK_ARGS=--upgrade (everything) or
# LOCK_ARGS='--upgrade-package transformers'; without them existing pins are kept if still valid.
LOCK_ARGS ?=
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m 'not slow'"`.
PYTEST_ARGS ?=
# Extra bench.rehearsal arguments, e.g. `make rehearsal REHEARSAL_ARGS="--layers 2"`.
REHEARSAL_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINT_FLAG := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
# promptflow's own venv: it cannot share .venv with Prefect (promptflow_app/README.md); the
# pipeline reaches it through a subprocess (finetune_phi/promptflow_bridge.py).
PF_VENV := .venv-promptflow
PF_STAMP := $(PF_VENV)/.installed
PF_LOCK := $(if $(LOCK),promptflow_app/requirements.lock,)
# pip-tools for `make lock`: it resolves with pip itself, so it sees what `pip install` sees
# (this machine's pip configuration: its index, the CPU torch on disk, the global caps).
LOCK_VENV := .venv-lock
LOCK_STAMP := $(LOCK_VENV)/.installed
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	--newline LF $(LOCK_ARGS)
# Test-only: playwright (from PyPI) driving the system's Chromium for the browser-chat test.
BROWSER_VENV := .venv-browser
BROWSER_STAMP := $(BROWSER_VENV)/.installed

.PHONY: install lock install-browser demo rehearsal test test-fast lint typecheck check clean-state help

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

install: $(STAMP) $(PF_STAMP)  ## create .venv (the project) and .venv-promptflow (idempotent)

# With a lock: exactly its versions, every file checked against its hash, then the project
# itself (editable, no dependencies, built with the lock's setuptools); `pip check` fails when
# pyproject.toml asks for something the lock lacks (run `make lock`). A changed lock reinstalls.
$(STAMP): pyproject.toml $(CONSTRAINTS) $(LOCK)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifneq ($(LOCK),)
	$(BIN)/python -m pip install --progress-bar off --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/python -m pip check \
		|| { echo "make: pip check failed; if pyproject.toml changed, run make lock" >&2; exit 1; }
else
	$(BIN)/python -m pip install --progress-bar off $(CONSTRAINT_FLAG) -e '.[dev]'
endif
	touch $@

$(PF_STAMP): promptflow_app/requirements.txt $(PF_LOCK)
	test -x $(PF_VENV)/bin/python || $(PYTHON) -m venv $(PF_VENV)
	$(PF_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PF_VENV)/bin/python -m pip install --progress-bar off \
		$(if $(PF_LOCK),--require-hashes -r $(PF_LOCK),-r promptflow_app/requirements.txt)
	touch $@

lock: $(LOCK_STAMP)  ## regenerate requirements.lock and promptflow_app/requirements.lock
	$(PIP_COMPILE) --extra dev --build-deps-for editable -c constraints.txt \
		-o requirements.lock pyproject.toml
	$(PIP_COMPILE) -o promptflow_app/requirements.lock promptflow_app/requirements.txt

$(LOCK_STAMP):
	test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet --progress-bar off 'pip-tools>=7.5,<8'
	touch $@

# Chromium comes from the system's packages (apt, when run as root); without it the browser
# test skips and says why. See tests/promptflow/install_chromium.sh.
install-browser: $(BROWSER_STAMP)  ## test-only: playwright + Chromium for the browser chat test
	@sh tests/promptflow/install_chromium.sh

$(BROWSER_STAMP): tests/promptflow/requirements-browser.txt
	test -x $(BROWSER_VENV)/bin/python || $(PYTHON) -m venv $(BROWSER_VENV)
	$(BROWSER_VENV)/bin/python -m pip install --quiet --progress-bar off -r $<
	touch $@

demo: install  ## run the full local pipeline on the embedded default (tiny Phi-3, synthetic chat data)
	$(BIN)/finetune-phi demo

rehearsal: install  ## the whole flow at Phi-3.5-mini's real size on this machine (docs/rehearsal.md)
	$(BIN)/python -m bench.rehearsal $(REHEARSAL_ARGS)

# pytest exits 5 when it collected no tests (a wrong path, a broken conftest, a -k that matches
# nothing): that is a broken suite, never a pass, so it fails here with its own message.
RUN_PYTEST = $(BIN)/python -m pytest $(1); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: pytest collected no tests: failing on purpose" >&2; exit 1; fi; \
	exit $$status

test: install install-browser  ## run the test suite (what CI runs)
	@$(call RUN_PYTEST,$(PYTEST_ARGS))

test-fast: install  ## the suite without the slow tier
	@$(call RUN_PYTEST,-m 'not slow' $(PYTEST_ARGS))

lint: install  ## ruff, and the import floors (import-linter, pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install  ## mypy (configured in pyproject.toml)
	$(BIN)/mypy

check: lint typecheck test  ## everything CI cares about

clean-state:  ## stop the local endpoint, delete the state folder; safe, the demo rebuilds it
	-test -x $(BIN)/finetune-phi && $(BIN)/finetune-phi endpoint stop
	rm -rf $${FINETUNE_PHI__STATE_DIR:-state}
