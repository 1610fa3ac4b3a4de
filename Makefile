# The two commands of the README. Both install everything first (idempotent, cached).
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV

.PHONY: install demo test test-fast check-env clean-venv

install:
	bash tools/setup_env.sh

demo: install
	bash tools/run_demo.sh

test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest tests -q -p no:randomly --durations=15

# day-to-day: everything but the end-to-end runs (marked slow), under 2 minutes
test-fast: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest tests -q -p no:randomly -m "not slow"

check-env: install
	$(PY) tools/check_env.py

clean-venv:
	rm -rf $(VENV)
