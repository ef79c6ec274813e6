# The two commands of the README:
#   make study   set up, then run the default CPU study end to end (report included)
#   make test    set up, then run the test suite (fast pass, then the end-to-end pass)
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

# two passes: the fast one (no papermill kernels, torchrun, browser or package install), then the
# end-to-end tests (marker e2e); skipped tests say why (-rs, pyproject.toml)
test: setup
	$(PY) -m pytest -q -m "not e2e"
	$(PY) -m pytest -q -m e2e

# JupyterLab on 127.0.0.1 only; the printed URL (with its token) opens notebooks/masks.ipynb,
# and the templates in notebooks/ are saved without outputs (jupyter/jupyter_server_config.py);
# root (a container) needs --allow-root
LAB_ARGS ?=
lab: setup
	$(VENV)/bin/jupyter lab --config="$(CURDIR)/jupyter/jupyter_server_config.py" --ServerApp.ip=127.0.0.1 \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

benchmarks: setup
	$(PY) benchmarks/masks.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/sparse_kernels.py
