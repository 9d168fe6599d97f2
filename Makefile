# Two commands do all set-up on a fresh machine (Python 3.11+):
#   make run   - install on first use, then start the Dagster UI (127.0.0.1:3000), the daemon
#                and the built-in demo agent with the example catalog
#   make test  - install on first use, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test validate lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "agent_pipelines needs Python 3.11+: run make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/agent-pipelines up

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "install Chromium (or set CHROMIUM=/path/to/chromium) for the browser tests"; exit 1; }
	$(SUDO) apt-get install -y --no-install-recommends chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }

# Two pytest-xdist workers: the modules that start a real dagster-daemon one after another on
# one, everything else beside them (tests/conftest.py); 12-18 min instead of 30.
# TEST_WORKERS=1 runs everything in one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)
test: $(STAMP) $(CHROMIUM)
	CHROMIUM=$(CHROMIUM) $(BIN)/pytest $(XDIST)

validate: $(STAMP)
	$(BIN)/agent-pipelines validate

lint: $(STAMP)
	$(BIN)/ruff check --select F,E9,B006,B008 agent_pipelines assets jobs resources sensors tests benchmarks

clean:
	rm -rf $(VENV) .dagster_home .pytest_cache
