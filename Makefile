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

RL := $(VENV)/bin/routelens
PLAN8 := $(RUN)/plans/routelens-8gpu.json
PLAN4 := $(RUN)/plans/routelens-4gpu.json
BENCH := $(RUN)/bench/bench-gloo-g4-h128-t4096.json
TRADEOFF := $(RUN)/reroute/tradeoff.json

# The whole pipeline on the bundled demo model; each step reuses what an earlier run made.
demo: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(RL) capture --out $(RUN) --save-logits --resume
	$(RL) info $(RUN)
	$(RL) analyze $(RUN)
	@$(MAKE) --no-print-directory $(PLAN8) $(PLAN4) $(BENCH) $(TRADEOFF)
	$(RL) plan-eval $(RUN) $(PLAN8)
	$(RL) app $(dir $(RUN))

$(PLAN8): $(RUN)/manifest.json
	$(RL) place $(RUN) --gpus 8 --out $@

$(PLAN4): $(RUN)/manifest.json
	$(RL) place $(RUN) --gpus 4 --out $@

# 4 CPU processes (gloo) replay the trace with the checkpoint's own experts: contiguous vs the plan
$(BENCH): $(PLAN4)
	$(RL) bench $(RUN) contiguous $(PLAN4) --gpus 4 --backend gloo --tokens-per-rank 4096 \
	  --model data/demo-moe --check --repeats 5 --warmup 1

# every re-routing policy applied inside the demo model: quality cost vs GPUs per token (8 GPUs)
$(TRADEOFF): $(RUN)/manifest.json
	$(RL) reroute-eval --max-tokens 3072 --batch-size 9 --out $(RUN)/reroute --json $(RUN)/reroute/rows.json

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
