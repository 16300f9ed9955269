# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install routelens with its extras into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned to the CPU wheel that lies on disk here; a GPU machine may bring its own (>=2.11).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= app,partition,test
RUN ?= runs/demo

.PHONY: demo test venv clean-venv bench

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/routelens capture --out $(RUN) --resume
	$(VENV)/bin/routelens info $(RUN)
	$(VENV)/bin/routelens app $(dir $(RUN))

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
