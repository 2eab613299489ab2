# The two commands a fresh machine needs: `make test` and `make demo`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch==2.13.0 resolves to the CPU wheel these machines carry; any other pin pulls CUDA packages.
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check interp activations probes tests benchmarks

test: $(STAMP) lint
	OMP_NUM_THREADS=2 $(VENV)/bin/pytest -q

demo: $(STAMP)
	$(VENV)/bin/interp demo --out runs/demo

bench: $(STAMP)
	$(PY) benchmarks/testbed_accuracy.py

clean:
	rm -rf $(VENV) runs *.egg-info
