# `make demo` and `make test` are all a fresh machine needs (see README.md).
#
# Variables (override on the command line, e.g. `make test TORCH=torch`):
#   TORCH       the torch requirement installed first. The default is a CPU build;
#               users with GPUs set e.g. TORCH="torch==2.13.0 --index-url <their CUDA index>".
#   TENSORFLOW  the TensorFlow requirement (tensorflow-cpu; `tensorflow` for GPUs).
#   BACKENDS    the Keras backends `make test` runs the suite on, one pytest run each.
#   PYTEST_ARGS extra pytest arguments, e.g. PYTEST_ARGS="-x -k losses".
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TENSORFLOW ?= tensorflow-cpu>=2.16
BACKENDS ?= jax torch tensorflow
PYTEST_ARGS ?=
DEMO_BACKEND ?= jax

VENV_PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --upgrade pip
	$(VENV_PYTHON) -m pip install $(TORCH) "$(TENSORFLOW)" -e ".[jax,data,eval,dev]"
# --no-deps: PyPI's torchvision cannot import beside the CPU torch wheel; the FID Inception needs only torch.
	$(VENV_PYTHON) -m pip install --no-deps "torch-fidelity==0.4.0"
	touch $(STAMP)

demo: install
	KERAS_BACKEND=$(DEMO_BACKEND) $(VENV_PYTHON) recipes/quickstart.py --output runs/quickstart

test: install
	@failed=""; \
	for backend in $(BACKENDS); do \
		echo "=== pytest, KERAS_BACKEND=$$backend ==="; \
		KERAS_BACKEND=$$backend $(VENV_PYTHON) -m pytest $(PYTEST_ARGS) || failed="$$failed $$backend"; \
	done; \
	if [ -n "$$failed" ]; then echo "tests FAILED on:$$failed"; exit 1; fi; \
	echo "tests passed on: $(BACKENDS)"

clean:
	rm -rf $(VENV) runs .pytest_cache
