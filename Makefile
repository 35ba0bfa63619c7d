# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e . --group test --group bench
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/textworld_agent.py

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(PY) -m pip install -q --group lint --group typing
	$(PY) -m ruff check langchain_kd_memory tests benchmarks examples
	$(PY) -m mypy langchain_kd_memory

clean:
	rm -rf $(VENV) demo_data bench_data .pytest_cache
