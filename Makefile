# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UV := $(VENV)/bin/uv

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export ANONYMIZED_TELEMETRY := False
export NO_MKDOCS_2_WARNING := 1

.PHONY: install demo test test-fast bench lint docs clean

# pip installs torch (the CPU wheel on this disk), uv the rest (24 s against pip's 54 s here).
# Neither compiles every module it unpacks (167 s against 75 s with pip's default); importing
# what the package, its tests and examples use compiles those, in two processes (one per core),
# and every later process reads them. Python may write them, whatever the shell says.
export PYTHONDONTWRITEBYTECODE :=
WARM_PACKAGE := import importlib, pkgutil, langchain_kd_memory as p; \
	[importlib.import_module(m.name) for m in pkgutil.walk_packages(p.__path__, "langchain_kd_memory.")]
WARM_REST := import sentence_transformers, textworld, openai, matplotlib.pyplot, sklearn, \
	hypothesis, pytest, xdist, langchain_tests, mkdocs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile torch==2.13.0 uv
	$(UV) pip install -q --python $(PY) -e . --group test --group bench --group docs
	$(PY) -c '$(WARM_PACKAGE)' & package=$$!; $(PY) -c '$(WARM_REST)' && wait $$package
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/textworld_agent.py

# Two workers (pytest-xdist), one file each at a time: module fixtures (a trained model, the
# examples' runs) are made once; `chroma run` servers take free ports and games their own caches.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

# The edit loop: everything but the tests marked slow (processes, servers, long training).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(UV) pip install -q --python $(PY) --group lint --group typing
	$(PY) -m ruff check langchain_kd_memory tests benchmarks examples docs
	$(PY) -m mypy langchain_kd_memory
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) demo_data bench_data site .pytest_cache
