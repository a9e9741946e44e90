# The README's two set-up commands are `make demo` and `make test`; both build .venv first.
SHELL := /bin/bash
PY    := .venv/bin/python
BIN   := .venv/bin
STAMP := .venv/.installed

.PHONY: demo test export-check nbtest pytest docs docs-quarto lab browser clean nbclean

$(STAMP): settings.ini setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/abdomen-nb demo --out runs/demo

# Everything: export check, every notebook, pytest (which includes the docs build + browser checks).
test: $(STAMP) browser export-check nbtest pytest

export-check: $(STAMP)
	$(BIN)/nbdev_export
	@if [ -n "$$(git status --porcelain -- abdomen_nb)" ]; then \
	  echo "nbdev_export changed abdomen_nb/: the package does not match the notebooks"; \
	  git status --short -- abdomen_nb; exit 1; fi
	@echo "export-check: abdomen_nb/ matches the notebooks"

nbtest: $(STAMP)
	MPLBACKEND=Agg $(BIN)/nbdev_test --n_workers 2 --timing

pytest: $(STAMP)
	MPLBACKEND=Agg $(BIN)/pytest -q tests/ -n 2 --durations=15

# Headless Chromium for the browser checks (Debian packages; about 70 s once).
browser:
	@command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)

# Offline docs site (no Quarto needed): processed notebooks -> static HTML in _site/.
docs: $(STAMP)
	if command -v quarto >/dev/null; then $(BIN)/nbdev_readme; else $(PY) tools/offline_docs.py --readme-only; fi
	$(PY) tools/offline_docs.py --out _site
	@echo "docs: open _site/index.html"

# The Quarto path, for machines that have Quarto.
docs-quarto: $(STAMP)
	ln -sf ../_quarto.yml nbs/_quarto.yml   # nbdev 2 reads nbs/_quarto.yml; the top-level file is the one kept
	$(BIN)/nbdev_docs

lab: $(STAMP)
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir nbs

clean:
	rm -rf _site _proc _docs runs tests/_out

# Strip stored widget state and clean every notebook (run before committing notebooks).
nbclean: $(STAMP)
	$(PY) tools/strip_widget_state.py nbs/*.ipynb
	$(BIN)/nbdev_clean
