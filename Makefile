# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# GPU users: `make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>"`.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.cvloc-installed
LINT_PATHS := src tests $(wildcard benchmarks)

.PHONY: install demo test lint format clean

$(PY):
	python3 -m venv $(VENV)

# torch first (the pinned CPU wheel), then the package: its `torch>=` requirement is then met.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q $(TORCH_SPEC)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/cvloc demo --out demo_out

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

test: lint
	$(PY) -m pytest -q

format: install
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache
