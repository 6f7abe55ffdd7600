# Entry points, each sets itself up on a fresh machine:
#   make demo       the toolkit's main job on data it makes itself
#   make test       the test suite
#   make efficacy   the efficacy tables (EFFICACY=quick: the synthetic tables; EFFICACY=full: hours; docs/results.md)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Torch is installed first and explicitly: pip then resolves everything else against it.
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# Optionally also fuse the demo pairs with a published model: make demo CHECKPOINT=ReFusion_IVIF.pth
CHECKPOINT ?=
DEMO := demo_out

EFFICACY ?= quick

.PHONY: install demo test efficacy clean

# constraints.txt pins the packages that move trained numbers (the committed tables' versions).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)/run $(DEMO)/data $(DEMO)/fused
	$(BIN)/tdfusion train --task recon --dataset synthetic --out $(DEMO)/run
	$(BIN)/tdfusion synth --out $(DEMO)/data --train 0 --test 8 --size 128 128
	$(BIN)/tdfusion fuse --checkpoint $(DEMO)/run/last.pt --a $(DEMO)/data/test/ir --b $(DEMO)/data/test/vi --out $(DEMO)/fused
	@echo "demo done: training samples and G's weight maps in $(DEMO)/run/samples/, fused test pairs in $(DEMO)/fused/"
	@if [ -n "$(CHECKPOINT)" ]; then \
	  $(BIN)/tdfusion fuse --checkpoint $(CHECKPOINT) --a $(DEMO)/data/test/ir --b $(DEMO)/data/test/vi --out $(DEMO)/fused_published; fi

test: $(STAMP)
	$(BIN)/python -m pytest

efficacy: $(STAMP)
	$(BIN)/python scripts/efficacy.py --mode $(EFFICACY)

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
