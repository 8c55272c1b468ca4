# `make demo` and `make test` are all a fresh machine needs (see README.md).
#
# Variables (override on the command line, e.g. `make test TORCH=torch`):
#   TORCH       the torch requirement installed first. The default is a CPU build;
#               users with GPUs set e.g. TORCH="torch==2.13.0 --index-url <their CUDA index>".
#   TENSORFLOW  the TensorFlow requirement (tensorflow-cpu; `tensorflow` for GPUs).
#   DEMO_BACKEND the backend of `make demo` (tensorflow: the fastest for the quickstart's small UNet on a CPU).
#   BACKENDS    the Keras backends `make test` runs the suite on, one pytest run each, all
#               at once (see docs/testing.md); each backend's log is in runs/test-logs/.
#   NEUTRAL_BACKEND the backend that runs the tests marked backend_neutral (torch if listed).
#   TEST_THREADS threads each backend's frameworks may use (1: the runs share the cores).
#   TEST_WORKERS pytest-xdist workers per backend (2: the backends' runs end together; 0: none).
#   PYTEST_ARGS extra pytest arguments, e.g. PYTEST_ARGS="-x -k losses".
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TENSORFLOW ?= tensorflow-cpu>=2.16
BACKENDS ?= jax torch tensorflow
PYTEST_ARGS ?=
NEUTRAL_BACKEND ?= $(if $(filter torch,$(BACKENDS)),torch,$(firstword $(BACKENDS)))
TEST_THREADS ?= 1
TEST_WORKERS ?= 2
TEST_LOGS := runs/test-logs
TEST_TMP := runs/test-tmp
DEMO_BACKEND ?= tensorflow

VENV_PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
# The demo needs its backend and the `eval` extra only (figures, the digits): a fresh machine runs it sooner.
DEMO_REQUIREMENT = $(if $(filter tensorflow,$(DEMO_BACKEND)),"$(TENSORFLOW)",$(if $(filter torch,$(DEMO_BACKEND)),$(TORCH),jax))

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --upgrade pip
	$(VENV_PYTHON) -m pip install $(TORCH) "$(TENSORFLOW)" -e ".[jax,data,eval,dev]"
# --no-deps: PyPI's torchvision cannot import beside the CPU torch wheel; the FID Inception needs only torch.
	$(VENV_PYTHON) -m pip install --no-deps "torch-fidelity==0.4.0"
	touch $(STAMP)

# After `make install` (the full set) the demo installs nothing more.
$(DEMO_STAMP): pyproject.toml Makefile
	if [ -f $(STAMP) ] && [ $(STAMP) -nt Makefile ] && [ $(STAMP) -nt pyproject.toml ]; then touch $(DEMO_STAMP); exit 0; fi; \
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV); \
	$(VENV_PYTHON) -m pip install $(DEMO_REQUIREMENT) -e ".[eval]" && \
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	KERAS_BACKEND=$(DEMO_BACKEND) $(VENV_PYTHON) recipes/quickstart.py --output runs/quickstart

# Each backend's closing lines go out in one write (the .summary file), so the runs' lines do not interleave:
# pytest's summary line ("==== 812 passed, 40 deselected in 1167.20s (0:19:27) ====", the last such line of the
# log, not its last line, which a subprocess's log line can be), or the log's last 80 lines when it failed.
test: install
	@mkdir -p $(TEST_LOGS) $(TEST_TMP); rm -f $(TEST_LOGS)/failed; \
	run_backend() { \
		backend=$$1; log=$(TEST_LOGS)/$$backend.log; \
		echo "=== pytest, KERAS_BACKEND=$$backend started $$(date +%T) (log: $$log) ==="; \
		if KERAS_BACKEND=$$backend KERAS_LCT_NEUTRAL_BACKEND=$(NEUTRAL_BACKEND) \
			OMP_NUM_THREADS=$(TEST_THREADS) TF_NUM_INTRAOP_THREADS=$(TEST_THREADS) \
			$(VENV_PYTHON) -m pytest -p no:cacheprovider --basetemp="$(CURDIR)/$(TEST_TMP)/$$backend" \
			$(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --no-loadscope-reorder) \
			$(PYTEST_ARGS) > $$log 2>&1; \
		then closing=$$(grep -E '^(=+ )?[0-9]+ [a-z].* in [0-9.]+s( \([0-9:]+\))?( =+)?$$' $$log | tail -n 1); \
		else closing=$$(tail -n 80 $$log); echo "$$backend" >> $(TEST_LOGS)/failed; fi; \
		{ echo "=== KERAS_BACKEND=$$backend finished $$(date +%T):"; echo "$${closing:-$$(tail -n 1 $$log)}"; } > $$log.summary; \
		cat $$log.summary; \
	}; \
	for backend in $(BACKENDS); do run_backend $$backend & done; \
	wait; \
	if [ -s $(TEST_LOGS)/failed ]; then echo "tests FAILED on: $$(tr '\n' ' ' < $(TEST_LOGS)/failed)"; exit 1; fi; \
	echo "tests passed on: $(BACKENDS)"

clean:
	rm -rf $(VENV) runs .pytest_cache
