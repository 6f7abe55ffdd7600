# Two entry points, each sets itself up on a fresh machine:
#   make demo   the toolkit's main job on data it makes itself
#   make test   the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Torch is installed first and explicitly: pip then resolves everything else against it.
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
CHECKPOINT ?=
DEMO := demo_out

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tdfusion synth --out $(DEMO)/data --train 8 --test 8
	@if [ -z "$(CHECKPOINT)" ]; then \
	  echo "error: no checkpoint given. Download a published ReFusion model (e.g. models/ReFusion_IVIF.pth from https://github.com/HaowenBai/ReFusion) and run: make demo CHECKPOINT=path/to/ReFusion_IVIF.pth" >&2; \
	  exit 2; fi
	$(BIN)/tdfusion fuse --checkpoint $(CHECKPOINT) --a $(DEMO)/data/test/ir --b $(DEMO)/data/test/vi --out $(DEMO)/fused

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
