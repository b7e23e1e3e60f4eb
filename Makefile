# pixelplay: every command sets itself up (creates .venv and installs on first use).
# Start here:  make demo   |   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed-stamp
DEMO   ?= demo-data
DEMO_OUT ?= runs/demo

.PHONY: help venv demo test lint bench sync clean
help:
	@grep -hE '^[a-z%-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | sort

$(STAMP): pyproject.toml requirements-local.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-local.txt
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP) ## create .venv and install the project (pinned torch)

demo: $(STAMP) ## generate demo data, train on CPU, fit the fusion, predict, score against the answer key
	$(PY) -m pixelplay_lib demo-data --out $(DEMO)
	$(PY) -m pixelplay_lib train --preset demo --data-root $(DEMO) --output-dir $(DEMO_OUT)
	$(PY) -m pixelplay_lib predict --data-root $(DEMO) --output-dir $(DEMO_OUT) --overwrite true
	$(PY) -m pixelplay_lib score --submission $(DEMO_OUT)/submission.csv --answers $(DEMO)/answer_key.csv --data-root $(DEMO)

# Two test processes (pytest-xdist), a file each at a time, the longest files first
# (tests/conftest.py): on 2 cores, less than half the time of one process (README).
TEST_WORKERS ?= 2
test: $(STAMP) ## the whole test suite, CPU only, no network
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The .py is the source: the .ipynb is written from it, never the reverse. An .ipynb that is
# newer and differs (Jupyter autosave, git checkout) stops it with what to keep and how.
NOTEBOOK_DIR ?= notebooks
sync: $(STAMP) ## write every notebooks/*.ipynb from its .py (stops if an .ipynb has own edits)
	$(PY) tools/sync_notebooks.py $(NOTEBOOK_DIR)/*.py

# The .ipynb is written from the .py first (the .py is what runs); relative paths in P are
# relative to notebooks/ (papermill runs the kernel there); the executed copy lands in
# runs/notebooks/.
run-%: $(STAMP) ## run a notebook locally with papermill, e.g. make run-train P='-p epochs 1'
	@test -f notebooks/$*.py || { echo "no notebook notebooks/$*.py"; exit 2; }
	$(PY) tools/sync_notebooks.py notebooks/$*.py
	@mkdir -p runs/notebooks
	$(BIN)/papermill notebooks/$*.ipynb runs/notebooks/$*.ipynb -k python3 --cwd notebooks \
		--log-output $(P)

bench: $(STAMP) ## speed benchmark, baseline vs project, side by side (table + JSON)
	$(PY) bench/bench.py $(BENCH_ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check pixelplay_lib tests bench tools notebooks/*.py

# runs/kaggle-* hold downloaded Kaggle outputs (trained models, submissions): never removed.
clean: ## remove demo data, runs/demo, runs/notebooks, build, dist (keeps .venv, runs/kaggle-* downloads, other runs)
	rm -rf $(DEMO) $(DEMO_OUT) runs/notebooks build dist

-include kaggle.mk
