# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# CPU torch for sae-lens, the real client of the interoperability tests: installed first, so
# nothing pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m raysae.demo

test: $(TEST_STAMP)
	$(PY) -m pytest -q tests

# Every benchmark in bench/; BENCHMARKS.md records their figures with the exact commands.
bench: $(TEST_STAMP)
	$(PY) bench/step.py
	$(PY) bench/lm.py
	$(PY) bench/cache.py
	$(PY) bench/stream.py
	$(PY) bench/evals.py
	$(PY) bench/sweep.py

clean:
	rm -rf $(VENV) runs .pytest_cache
