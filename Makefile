# Pinwheel: the only entry points a newcomer needs.
#   make test         every test: lint, test-python, test-fleet (installs what it needs first)
#   make test-python  unit and integration tests on real services
#   make lint         ruff, yamllint, ansible-lint (production profile)
#   make bench        the benchmarks (bench-queue, bench-agent, bench-logs ...), written to docs/benchmarks.md
#   make farm         a complete local farm in podman (make farm-down removes it)
#   make test-fleet   the molecule scenario: six hosts, converge, idempotence, verify

SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
CACHE := .cache
SEED := $(CACHE)/upstream-seed
APT_PACKAGES := postgresql nginx-light libnginx-mod-http-perl openssh-server openssh-client rsync sudo procps \
	python3 python3-venv python3-pip python3-dev python3-psycopg2 python3-setuptools \
	build-essential libpq-dev gzip zlib1g-dev libffi-dev chromium tinyproxy
export PINWHEEL_SEED_DIR := $(abspath $(SEED))

.PHONY: help deps test-deps test test-python lint bench bench-queue bench-index bench-agent bench-logs bench-plan farm farm-down clean

help:
	@sed -n 's/^#   //p' Makefile

# --- what the tests need: Debian packages, a venv, the upstream's seed wheels
$(CACHE)/apt.stamp:
	@mkdir -p $(CACHE)
	@if dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -qv 'install ok installed' \
	    || [ "$$(dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | wc -l)" -lt "$(words $(APT_PACKAGES))" ]; then \
	  echo "==> installing Debian packages: $(APT_PACKAGES)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi
	@touch $@

$(VENV)/.installed: agent/pyproject.toml requirements-dev.txt
	@echo "==> creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip
	@$(VENV)/bin/pip install -q -e 'agent[test]' -r requirements-dev.txt
	@touch $@

$(SEED)/.fetched: | $(VENV)/.installed
	@echo "==> fetching setuptools and wheel for the tests' local upstream index"
	@mkdir -p $(SEED)
	@$(VENV)/bin/pip download -q --only-binary :all: --no-deps -d $(SEED) setuptools wheel
	@touch $@

deps test-deps: $(CACHE)/apt.stamp $(VENV)/.installed $(SEED)/.fetched

# --- tests
# Lint first (seconds to fail), then the services on loopback, then the fleet.
test: lint test-python test-fleet

test-python: test-deps
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check agent tests bench scripts
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/yamllint --strict .
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/ansible-lint --profile production

# --- benchmarks (pgqueuer, dumb-pypi, pypiserver live in their own venv; wrk from Debian)
# Each writes its own section of docs/benchmarks.md; they run niced (helpers share the machine).
BENCH_VENV := $(CACHE)/bench-venv
BENCH_APT_PACKAGES := wrk
$(CACHE)/bench-apt.stamp: $(CACHE)/apt.stamp
	@if ! dpkg-query -W -f='$${Status}\n' $(BENCH_APT_PACKAGES) 2>/dev/null | grep -q 'install ok installed'; then \
	  echo "==> installing Debian packages for the benchmarks: $(BENCH_APT_PACKAGES)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BENCH_APT_PACKAGES); \
	fi
	@touch $@

$(BENCH_VENV)/.installed: bench/requirements.txt agent/pyproject.toml | $(CACHE)/bench-apt.stamp
	@$(PYTHON) -m venv $(BENCH_VENV)
	@$(BENCH_VENV)/bin/pip install -q -e './agent[master]' -r bench/requirements.txt
	@touch $@

bench: bench-queue bench-index bench-agent bench-logs bench-plan

bench-queue: $(CACHE)/apt.stamp $(BENCH_VENV)/.installed
	nice -n 10 $(BENCH_VENV)/bin/python bench/queue_bench.py

bench-index: $(CACHE)/apt.stamp $(CACHE)/bench-apt.stamp $(BENCH_VENV)/.installed
	nice -n 10 $(BENCH_VENV)/bin/python bench/index_bench.py

# The access log importer beside a raw COPY, 5,000,000 lines (test harness, docs/downloads.md).
bench-logs: test-deps
	nice -n 10 $(VENV)/bin/python bench/logs_bench.py

# Planning one release at 1k, 10k and 100k releases (test harness PostgreSQL, about a minute).
bench-plan: test-deps
	nice -n 10 $(VENV)/bin/python bench/plan_bench.py

# The agent's overhead per job runs on the test harness (real agent, sshd, PostgreSQL).
bench-agent: test-deps
	$(VENV)/bin/python bench/agent_overhead.py

# --- the podman fleet: images, the local farm, the molecule scenario (docs/farm.md)
include mk/fleet.mk

clean:
	rm -rf $(VENV) $(CACHE) .pytest_cache .ruff_cache
