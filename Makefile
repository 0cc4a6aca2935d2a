# ilm: two commands set everything up on a fresh machine.
#   make demo   creates .venv, installs ilm, runs `ilm demo` on the embedded default
#   make test   installs what the tests need (Debian packages as root, Python
#               packages into .venv) and runs the whole suite on SQLite and PostgreSQL
#   make bench  runs the benchmarks in bench/ and rewrites BENCHMARKS.md

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PACKAGES := dcmtk orthanc postgresql chromium chromium-driver
PYTEST_ARGS ?=

.PHONY: demo test bench typecheck venv test-deps system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/ilm demo

# Debian packages the tests and benchmarks use: dcmtk (storescu, findscu ...),
# Orthanc (the peer archive), PostgreSQL (the catalog at scale), Chromium and
# its driver (the dashboard's end-to-end tests).
system-deps:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	[ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	[ -x /usr/lib/postgresql/15/bin/pg_ctl ] || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

test-deps: system-deps $(VENV)/.test-installed

test: test-deps
	$(BIN)/python -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

bench: test-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

typecheck: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) ilm-demo build src/*.egg-info .pytest_cache
