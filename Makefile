# facelab monorepo. Everything installs from nothing: only python3 (3.11) and make are needed.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# uv: use the one on PATH, else the one pip installs as a module (setup installs it when missing)
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export UV_PYTHON ?= 3.11
export PYTHONHASHSEED ?= 0

# package short name -> folder (core lives in shared/, benchmarks in benchmarks/, methods in packages/)
METHODS := $(sort $(notdir $(patsubst %/pyproject.toml,%,$(wildcard packages/*/pyproject.toml))))
PACKAGES := core $(METHODS) benchmarks
pkg_dir = $(if $(filter core,$(1)),shared,$(if $(filter benchmarks,$(1)),benchmarks,packages/$(1)))
pkg_name = facelab-$(1)

.PHONY: help uv setup demo test test-all test-integration test-install lint format wheels bench gpu-check clean $(addprefix test-,$(PACKAGES))

help:
	@echo "make setup        install uv (if missing) and sync the whole workspace"
	@echo "make demo         the main job: run the quick cross-method benchmark"
	@echo "make test         every package's tests, each in its own isolated env, then tests/"
	@echo "make test-PKG     one package's tests (PKG in: $(PACKAGES))"
	@echo "make lint         ruff check + ruff format --check"
	@echo "make wheels       wheel + sdist of every package into dist/"
	@echo "make bench        facelab bench speed"
	@echo "make gpu-check    every package's CUDA path once + GPU bench rows, ~10 min (needs a GPU)"

uv:
	@if ! command -v uv >/dev/null 2>&1 && ! python3 -m uv --version >/dev/null 2>&1; then \
		echo "installing uv with pip"; \
		python3 -m pip install --quiet uv || python3 -m pip install --quiet --user --break-system-packages uv; \
	fi

setup: uv
	$(UV) sync --locked --all-packages --all-extras

demo: setup
	$(UV) run --locked facelab bench quick --out results/quick
	@echo "report: $(CURDIR)/results/quick/report.md"

# Each package runs in a fresh environment holding only that package, its declared
# dependencies (all extras) and its own dev group: a missing dependency declaration fails here.
define test_pkg
test-$(1): uv
	@echo "=== facelab-$(1): isolated tests ==="
	@$(UV) run --locked --isolated --all-extras --package $(call pkg_name,$(1)) \
		pytest -c $(CURDIR)/pyproject.toml --rootdir=$(CURDIR) $(call pkg_dir,$(1))/tests \
		|| { echo "FAILED: facelab-$(1)"; exit 1; }
endef
$(foreach p,$(PACKAGES),$(eval $(call test_pkg,$(p))))

test-integration: setup
	@echo "=== cross-package tests (tests/) ==="
	@$(UV) run --locked pytest -c $(CURDIR)/pyproject.toml tests || { echo "FAILED: integration tests"; exit 1; }

test-install: uv
	@echo "=== install-alone check (wheels into fresh venvs) ==="
	@$(UV) run --locked --no-project --with packaging python scripts/check_install.py $(PACKAGES) \
		|| { echo "FAILED: install-alone check"; exit 1; }

test: uv
	@$(UV) lock --check
	@failed=""; \
	for p in $(PACKAGES); do $(MAKE) --no-print-directory test-$$p || failed="$$failed facelab-$$p"; done; \
	$(MAKE) --no-print-directory test-integration || failed="$$failed integration"; \
	$(MAKE) --no-print-directory test-install || failed="$$failed install-check"; \
	if [ -n "$$failed" ]; then echo "make test FAILED in:$$failed"; exit 1; fi; \
	echo "make test: all packages passed"

lint: setup
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .

format: setup
	$(UV) run --locked ruff check --fix .
	$(UV) run --locked ruff format .

wheels: uv
	rm -rf dist
	$(UV) build --all-packages --out-dir dist

bench: setup
	$(UV) run --locked facelab bench speed

gpu-check: setup
	$(UV) run --locked scripts/gpu_check.sh results/gpu-check

clean:
	rm -rf dist results .pytest_cache .ruff_cache
