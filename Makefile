# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m raysae.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

# Every benchmark in bench/; BENCHMARKS.md records their figures with the exact commands.
bench: $(STAMP)
	$(PY) bench/step.py
	$(PY) bench/lm.py
	$(PY) bench/cache.py
	$(PY) bench/stream.py
	$(PY) bench/evals.py
	$(PY) bench/sweep.py

clean:
	rm -rf $(VENV) runs .pytest_cache
