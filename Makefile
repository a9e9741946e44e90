# The README's two set-up commands are `make demo` and `make test`; both build .venv first.
SHELL := /bin/bash
PY    := .venv/bin/python
BIN   := .venv/bin
STAMP := .venv/.installed

.PHONY: demo test export-check nbtest pytest docs docs-serve docs-quarto lab kernel browser itk clean nbclean

$(STAMP): settings.ini setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,radiomics]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/abdomen-nb demo --out runs/demo

# Everything: export check, every notebook, pytest (which includes the docs build + browser checks).
test: $(STAMP) browser itk export-check nbtest pytest

export-check: $(STAMP)
	$(BIN)/nbdev_export
	@if [ -n "$$(git status --porcelain -- abdomen_nb)" ]; then \
	  echo "nbdev_export changed abdomen_nb/: the package does not match the notebooks"; \
	  git status --short -- abdomen_nb; exit 1; fi
	@echo "export-check: abdomen_nb/ matches the notebooks"

# Every notebook (slow cells skipped); prints the five slowest at the end, pass or fail.
nbtest: $(STAMP)
	MPLBACKEND=Agg $(PY) tools/nbtest.py --n_workers 2

pytest: $(STAMP)
	MPLBACKEND=Agg $(BIN)/pytest -q tests/ -n 2 --durations=15

# Headless Chromium for the browser checks (Debian packages; about 70 s once). Without apt the browser
# tests skip with a message saying how to get Chromium (ABDOMEN_NB_REQUIRE_BROWSER=1, set by .ci/run, fails them).
browser:
	@if command -v chromium >/dev/null || [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  echo "browser: installing Chromium with apt (chromium chromium-driver)"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "browser: no Chromium and no apt-get here: the browser tests will skip (install Chromium, or set ABDOMEN_NB_CHROMIUM)"; fi

# The itkwidgets-style viewer's JavaScript (itk-vtk-viewer from the npm registry, ~110 MB, into the venv;
# idempotent: a second run fetches nothing). view3d(case, backend='itk') and its browser test need it.
itk: $(STAMP)
	$(BIN)/abdomen-nb viewer install-itk

# Offline docs site (no Quarto needed): processed notebooks -> static HTML in _site/, maths as MathML, a
# Pagefind search index. Fails (exit 1, each error named) on a cell error, broken internal link or missing figure.
docs: $(STAMP)
	$(PY) tools/offline_docs.py --readme-only
	$(PY) tools/offline_docs.py --out _site
	@echo "docs: open _site/index.html, or run make docs-serve for the search too"

# The site over HTTP on 127.0.0.1:8000 (the search reads its index with fetch, which file:// does not allow).
docs-serve:
	@test -f _site/index.html || $(MAKE) docs
	$(PY) -m http.server --bind 127.0.0.1 --directory _site 8000

# The Quarto path, for machines that have Quarto.
docs-quarto: $(STAMP)
	ln -sf ../_quarto.yml nbs/_quarto.yml   # nbdev 2 reads nbs/_quarto.yml; the top-level file is the one kept
	$(BIN)/nbdev_docs

# The venv's ipykernel as the `python3` kernel every notebook's kernelspec names (inside .venv, --sys-prefix),
# so JupyterLab opens each notebook on it without asking.
kernel: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (abdomen_nb)"

lab: kernel
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir nbs

clean:
	rm -rf _site _proc _docs runs tests/_out

# Strip stored widget state and clean every notebook (run before committing notebooks).
nbclean: $(STAMP)
	$(PY) tools/strip_widget_state.py nbs/*.ipynb
	$(BIN)/nbdev_clean
