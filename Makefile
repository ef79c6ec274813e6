# The two commands of the README:
#   make study   set up, then run the default CPU study end to end (report included)
#   make test    set up, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STUDY ?= cpu
JOBS ?= 2

.PHONY: setup study test benchmarks

setup:
	@bash scripts/setup-env.sh

study: setup
	$(VENV)/bin/maxq batch $(STUDY) --jobs $(JOBS)

test: setup
	$(PY) -m pytest -q

benchmarks: setup
	$(PY) benchmarks/masks.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/sparse_kernels.py
