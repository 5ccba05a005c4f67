# modstream developer entry points. `make test` is what CI runs (.ci/run).
#
#   make install     .venv with python3.11 and the project (editable, dev extras)
#   make lint        ruff check, ruff format --check, mypy --strict (consumer, schemas, tests)
#   make test        install, lint, then unit + integration + e2e tests (starts its own broker)
#   make demo        the pipeline end to end on a local broker (deploy/demo.sh);
#                    FORMAT=avro: Avro in and out through a local schema registry
#   make bench       benchmarks (not part of `make test`)
#   make soak        the SIGKILL, rebalance and exactly-once e2e tests 5x each (SOAK_RUNS=N), a summary
#   make mutation    mutmut over the core modules against their unit tests (not part of `make test`)
#   make kafka-up    start the dev broker on localhost:9092 (kafka-down stops it)
#   make registry-jars  build the test schema registry (deploy/registry; `make test` does it)
#   make schema      regenerate schemas/json from the event models
#   make clean       remove caches and .run/ (keeps .venv, the jars, busy test brokers)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modstream-installed
KAFKA_SH := deploy/kafka/kafka.sh
REGISTRY_SH := deploy/registry/registry.sh
TEST_DIRS := $(wildcard tests/unit tests/integration tests/e2e)
PYTEST_ARGS ?=
# The e2e tests mostly wait (on the broker, on rebalances, on injected latency), so two
# workers, each with a broker of its own (tests/conftest.py), halve the suite's wall time even
# on two cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
KEEP ?= 0
FORMAT ?= json

.PHONY: help install lint test soak bench mutation demo kafka-up kafka-down kafka-jars registry-jars schema clean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict consumer schemas
	$(VENV)/bin/mypy tests  # strict too (pyproject), with overrides for untyped test-only libraries

# Resolve the broker's jars up front, so the first integration test's timeout does not
# include a Maven download on a fresh clone.
kafka-jars:
	KAFKA_PYTHON=$(PY) bash $(KAFKA_SH) fetch

# The same for the schema registry of the schema-registry input tests: Apicurio's jars and its
# Quarkus build, about 2 minutes from an empty ~/.m2, nothing once built.
registry-jars:
	REGISTRY_PYTHON=$(PY) bash $(REGISTRY_SH) fetch

# pytest exits 5 when it collected nothing: that is a failure here too (no `|| true`).
test: install lint kafka-jars registry-jars
	$(PY) -m pytest $(TEST_DIRS) -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The fault tests whose failures are timing-dependent, each run SOAK_RUNS times in a pytest
# session of its own; every run's output is kept in .run/soak/. Not part of `make test`.
SOAK_RUNS ?= 5
SOAK_TESTS ?= \
  tests/e2e/test_core.py::test_sigkill_five_times_loses_nothing \
  tests/e2e/test_core.py::test_consumer_joins_and_leaves_mid_run \
  tests/e2e/test_exactly_once.py::test_three_sigkills_no_duplicates_no_loss \
  tests/e2e/test_eos_rebalance.py::test_members_join_and_leave_while_transactions_are_open
SOAK_DIR := .run/soak

soak: install kafka-jars
	@rm -rf $(SOAK_DIR); mkdir -p $(SOAK_DIR); runs=0; failed=0; \
	for i in $$(seq 1 $(SOAK_RUNS)); do \
	  for t in $(SOAK_TESTS); do \
	    runs=$$((runs + 1)); \
	    log=$(SOAK_DIR)/$$(basename "$${t%%::*}" .py)-$${t##*::}-$$i.log; \
	    started=$$SECONDS; \
	    if $(PY) -m pytest -p no:cacheprovider -q "$$t" $(PYTEST_ARGS) > "$$log" 2>&1; then \
	      result=pass; else result=FAIL; failed=$$((failed + 1)); fi; \
	    printf '%-4s %3ss  run %s/%s  %s\n' "$$result" "$$((SECONDS - started))" "$$i" \
	      "$(SOAK_RUNS)" "$$t" | tee -a $(SOAK_DIR)/summary.txt; \
	  done; \
	done; \
	echo; echo "soak summary (logs in $(SOAK_DIR)/):"; \
	for t in $(SOAK_TESTS); do \
	  printf '  %s of %s failed  %s\n' "$$(grep -c "^FAIL .* $$t$$" $(SOAK_DIR)/summary.txt || true)" \
	    "$(SOAK_RUNS)" "$$t"; \
	done; \
	echo "soak: $$failed of $$runs runs failed"; \
	test "$$failed" -eq 0

bench: install
	@if [ -f tests/benchmarks/__main__.py ]; then \
	  $(PY) -m tests.benchmarks; \
	elif ls tests/benchmarks/test_*.py >/dev/null 2>&1; then \
	  $(PY) -m pytest tests/benchmarks -p no:cacheprovider; \
	else \
	  echo "no benchmarks yet (tests/benchmarks is empty)"; \
	fi

# mutmut is installed here only (not a dev extra): it is slow and not part of CI. It runs in a
# scratch copy, .run/mutation, configured by tests/mutmut.cfg; `mutmut results` lists survivors.
MUTMUT := $(abspath $(VENV))/bin/mutmut
mutation: install
	$(PY) -m pip install --quiet 'mutmut>=3.8,<4'
	rm -rf .run/mutation && mkdir -p .run/mutation
	git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t .run/mutation
	cp tests/mutmut.cfg .run/mutation/setup.cfg
	cd .run/mutation && $(MUTMUT) run --max-children 2 && $(MUTMUT) results

demo: install
	KEEP=$(KEEP) FORMAT=$(FORMAT) bash deploy/demo.sh

kafka-up: install
	KAFKA_PYTHON=$(PY) bash $(KAFKA_SH) up

kafka-down:
	KAFKA_PYTHON=$(PY) bash $(KAFKA_SH) down

schema: install
	$(VENV)/bin/modstream schema --out schemas/json

# Test brokers another session still holds (its lock in .run) are left alone.
clean:
	@for d in .run/kafka-test*/ .run/kafka-sasl*/; do \
	  [ -d "$$d" ] || continue; d=$${d%/}; \
	  if flock -n "$$d.lock" true 2>/dev/null; then \
	    KAFKA_DATA_DIR=$$d KAFKA_PYTHON=$(PY) bash $(KAFKA_SH) down >/dev/null; rm -rf "$$d" "$$d.lock"; \
	  else echo "keeping $$d: a test session is using it"; fi; \
	done
	find .run -mindepth 1 -maxdepth 1 ! -name 'kafka-test*' ! -name 'kafka-sasl*' -exec rm -rf {} + 2>/dev/null || true
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
