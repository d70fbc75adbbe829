# The README's two commands are `make demo` and `make test`.
VENV := .venv/bin
.PHONY: demo deps install lint build pytest test test-fast bench clean

install:
	scripts/install.sh --extras demo

deps:
	scripts/install-test-deps.sh

# Installs Prometheus and Alertmanager (apt) and Steward (.venv) first; each step says why.
demo:
	scripts/install-demo-deps.sh
	$(VENV)/steward demo --log-format text

lint: deps
	$(VENV)/ruff check agent tests bench dashboards
	$(VENV)/mypy agent
	# The layers and component contracts in pyproject.toml (docs/architecture.md).
	$(VENV)/lint-imports --no-logo
	# Generated files are committed; CI fails when they are stale.
	$(VENV)/steward build --check
	scripts/gen-podresources.sh --check
	scripts/sync-chart-files.sh --check

build: install
	$(VENV)/steward build

pytest: deps
	scripts/run-tests.sh -q

# Everything CI checks: lint, types, tests.
test: lint pytest

# The fast lane, for the edit-test loop (after `make deps` once): no real server, no helm or
# promtool runs. A test that starts a server (Prometheus, Alertmanager, the registry, moto,
# PostgreSQL, kube-apiserver, a `steward` server) fails here unless it is marked
# integration: tests/support/fast_lane.py. `make test` runs everything.
test-fast:
	STEWARD_TEST_LANE=fast scripts/run-tests.sh -q -m "not integration and not slow"

bench: deps
	$(VENV)/python bench/scrape_cost.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
