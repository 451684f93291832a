# The two commands of the README: `make reproduce` (the main job) and `make test`.
PYTHON ?= python3
PROFILE ?= smoke
# torch is pinned here, not in pyproject.toml: an unpinned install pulls the newest CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install reproduce test lint

install:
	$(PYTHON) -m pip install -q "$(TORCH)" -e ".[notebooks,test]"

reproduce: install
	$(PYTHON) -m vfcore.reproduce --profile $(PROFILE)

test: install
	$(PYTHON) -m pytest tests notebooks --nbval-lax --sanitize-with notebooks/sanitize.cfg

lint:
	$(PYTHON) -m ruff check .
