# The two commands of the README: `make reproduce` (the main job) and `make test`.
PYTHON ?= python3
PROFILE ?= smoke
# Endpoints trained at once (each on one thread): the usable cores by default.
WORKERS ?= $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)))")
# torch is pinned here, not in pyproject.toml: an unpinned install pulls the newest CUDA build.
TORCH ?= torch==2.13.0
# Where the test suite's notebooks write, so that `make test` leaves the committed figures alone.
TEST_FIGURES ?= $(CURDIR)/build/test-figures

.PHONY: install reproduce test lint site

install:
	$(PYTHON) -m pip install -q "$(TORCH)" -e ".[notebooks,test,docs]"

reproduce: install
	$(PYTHON) -m vfcore.reproduce --profile $(PROFILE) --workers $(WORKERS)

# Unit tests and the paper-structured toy profile over every notebook, then the smoke notebooks
# (nbval), each on WORKERS processes of one thread (pytest-xdist; a notebook stays on one worker
# and the longest start first, as `make reproduce` executes them), then the claims guard:
# regenerated smoke claims against the committed.
test: install
	$(PYTHON) -m vfcore.reproduce --profile smoke --train-only --workers $(WORKERS)
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest tests -n $(WORKERS) --dist worksteal
	rm -rf $(TEST_FIGURES)
	OMP_NUM_THREADS=1 VFCORE_FIGURES=$(TEST_FIGURES) $(PYTHON) -m pytest notebooks \
		-n $(WORKERS) --dist loadfile --no-loadscope-reorder \
		--nbval-lax --sanitize-with notebooks/sanitize.cfg
	$(PYTHON) -m vfcore.claims guard $(TEST_FIGURES)/smoke figures/smoke

lint:
	$(PYTHON) -m ruff check .

# The committed, executed notebooks as a static HTML site in build/site/ (runs no notebook,
# fetches nothing); open build/site/index.html.
site: install
	$(PYTHON) docs/build.py --out build/site
