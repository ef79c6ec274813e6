# The two commands of the README:
#   make study   set up, then run the default CPU study end to end (report included)
#   make test    set up, then run the test suite
#   make lab     set up, then open the mask explorer (notebooks/masks.ipynb) in JupyterLab
VENV ?= .venv
PY := $(VENV)/bin/python
STUDY ?= cpu
JOBS ?= 2

.PHONY: setup study test lab benchmarks

setup:
	@bash scripts/setup-env.sh

study: setup
	$(VENV)/bin/maxq batch $(STUDY) --jobs $(JOBS)

test: setup
	$(PY) -m pytest -q

# JupyterLab on 127.0.0.1 only, with the explorer open (the token is printed in the URL);
# root (a container) needs --allow-root
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$(CURDIR)" \
		$(if $(filter 0,$(shell id -u)),--allow-root) notebooks/masks.ipynb

benchmarks: setup
	$(PY) benchmarks/masks.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/sparse_kernels.py
