# securefl — two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-network test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/securefl train --dp --secagg --batch-size 32 --lr 0.25 --out runs/demo --overwrite

demo-network: $(STAMP)
	$(VENV)/bin/securefl demo network --clients 5 --out runs/demo-network --overwrite

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check securefl tests benchmarks
	$(VENV)/bin/ruff format --check securefl tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/fedavg.py

clean:
	rm -rf runs .pytest_cache .hypothesis .ruff_cache
