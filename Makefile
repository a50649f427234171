# The two entry points of the README. Both install what they need on a fresh machine.
PYTHON ?= python3

.PHONY: setup demo test

# torch: take the local CPU wheel (exactly 2.13.0) only when torch is missing; any other
# spec would download the CUDA build.
setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	@$(PYTHON) -m pip install -q --disable-pip-version-check -e ".[test]"

demo: setup
	$(PYTHON) examples/quickstart.py

test: setup
	$(PYTHON) -m pytest -q -n auto tests  # one worker per core (pytest-xdist)
