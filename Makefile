# The two commands of the README:  make book   and   make test
# Both do all the set-up on first use: a virtual environment in .venv with a CPU build of PyTorch,
# the requirements, and the offline browser assets (MathJax, widget manager) from npm.
#
#   make book                          build the HTML book into _build/html (executes every notebook)
#   make test                          unit tests, every chapter notebook (nbmake), the book build
#                                      with warnings as errors, the browser test of the built pages,
#                                      and the Colab path (first chapter from a fresh venv)
#   make screenshots                   every page, whole, light and dark, into _build/screenshots/
#   make readme-screenshot             the landing page's first screen, as the browser test took it,
#                                      into docs/book.png (the README's picture; commit it)
#   make bench                         the benchmarks (benchmarks/)
#   make bench-profile                 where the time of a training and a decoding step goes (torch.profiler)
#   make sync                          write chapters/NN_name.ipynb from its source chapters/NN_name.md
#   make chapter CH=02                 sync, then run one chapter top to bottom (nbmake), with its time
#   make jupyter                       JupyterLab (+ jupytext, to open the .md sources as notebooks)
#   make clear-outputs                 strip outputs from chapters/*.ipynb before committing
#   make clean / make distclean        remove build outputs / also the virtual environment
#
# Overrides: make book TORCH_SPEC="torch>=2.4"          (any pip requirement for torch)
#            make book TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
#            make test JOBS=1                            (pytest-xdist workers; default 2)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
JOBS ?= 2
# Rebuild every page (--all): the doctree cache does not notice a change in minimind_ref, and
# execute_notebooks: force in _config.yml executes every notebook it re-reads.
BOOK_FLAGS ?= --all -W -n --keep-going
NOTEBOOKS := $(sort $(wildcard chapters/*.ipynb))
TIMED := scripts/timed.sh
ASSETS := _static_book/offline/VERSIONS.json
VENV_STAMP := $(VENV)/.book-installed

# Phases depend on each other's outputs (the browser test reads the built book): never run them in parallel.
.NOTPARALLEL:

.PHONY: all venv assets book test test-unit test-notebooks test-book test-browser test-colab \
	screenshots bench bench-profile readme-screenshot \
	sync chapter jupyter clear-outputs clean distclean

all: book

## ---- set-up -------------------------------------------------------------------------------

venv: $(VENV_STAMP)

# Remember which torch was asked for, so that a different TORCH_SPEC reinstalls.
$(VENV)/.torch-spec: FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH_SPEC) $(TORCH_PIP_ARGS)' | cmp -s - $@ || echo '$(TORCH_SPEC) $(TORCH_PIP_ARGS)' > $@

$(VENV_STAMP): requirements.txt pyproject.toml $(VENV)/.torch-spec
	@test -x $(PY) || $(TIMED) "venv" $(PYTHON) -m venv $(VENV)
	@# torch first, from the spec given: the requirements' floor is then already satisfied
	$(TIMED) "torch" $(PY) -m pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(TIMED) "requirements" $(PY) -m pip install -q -r requirements.txt
	@touch $@

assets: $(ASSETS)

# Pinned MathJax, RequireJS and @jupyter-widgets/html-manager from the npm registry (needs npm).
$(ASSETS): scripts/fetch_assets.py
	@$(TIMED) "assets" $(PYTHON) scripts/fetch_assets.py

FORCE:

## ---- the book -----------------------------------------------------------------------------

book: venv assets
	$(TIMED) "book" $(VENV)/bin/jupyter-book build . $(BOOK_FLAGS)
	@test -f _build/html/index.html && echo "The book: _build/html/index.html"

## ---- tests --------------------------------------------------------------------------------

test: test-unit test-notebooks test-book test-browser test-colab
	@echo "make test: all phases passed"

test-unit: venv
	$(TIMED) "unit tests" $(PY) -m pytest tests/ -m "not browser" --ignore=tests/test_colab.py -n $(JOBS) -q

test-notebooks: venv
ifeq ($(NOTEBOOKS),)
	@echo "==> [notebooks] no chapter notebooks in chapters/ yet: skipped"
else
	$(TIMED) "notebooks (nbmake)" $(PY) -m pytest --nbmake --nbmake-timeout=300 -n $(JOBS) -q $(NOTEBOOKS)
endif

test-book: book

test-browser: venv
	$(TIMED) "browser" $(PY) -m pytest tests/test_browser.py -m browser -q -rs

# every page, whole, light and dark, into _build/screenshots/ (the browser test takes only the first tile)
screenshots: venv
	BOOK_SCREENSHOTS=all $(TIMED) "screenshots" $(PY) -m pytest tests/test_browser.py -m browser -q -rs -k renders_offline

readme-screenshot:
	@test -f _build/screenshots/intro.first-screen.png || $(MAKE) test-browser
	mkdir -p docs && cp _build/screenshots/intro.first-screen.png docs/book.png
	@echo "docs/book.png: the landing page as the browser test saw it"

test-colab: venv
	$(TIMED) "colab" $(PY) -m pytest tests/test_colab.py -q -rs

## ---- benchmarks and cleaning --------------------------------------------------------------

bench: venv
	$(TIMED) "bench" $(PY) -m benchmarks

bench-profile: venv
	$(TIMED) "bench-profile" $(PY) -m benchmarks.profile_steps

## ---- writing chapters ---------------------------------------------------------------------

# The .md is the source; the .ipynb is generated (cell ids kept, outputs dropped). tests/test_book.py
# fails when a pair is out of sync.
sync: venv
	$(PY) scripts/sync_chapters.py

# One chapter alone, e.g. make chapter CH=01 (or CH=01_rmsnorm)
chapter: sync
	@test -n "$(CH)" || { echo "usage: make chapter CH=02"; exit 2; }
	$(TIMED) "chapter $(CH)" $(PY) -m pytest --nbmake --nbmake-timeout=300 -q $(wildcard chapters/$(CH)*.ipynb)

# JupyterLab in the project's venv; jupytext lets it open chapters/NN_name.md as a notebook that
# saves to both files of the pair
jupyter: venv
	@$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install -q "jupyterlab>=4" "jupytext>=1.16"
	$(VENV)/bin/jupyter lab chapters/

clear-outputs: venv
	$(PY) scripts/clear_outputs.py $(NOTEBOOKS)

clean:
	rm -rf _build _static_book/offline _static_book/offline.tmp

distclean: clean
	rm -rf $(VENV)
