# Build and check the book.   make book | make test | make chapters | make clean
# Everything runs in .venv, made from the pinned requirements.txt (see book/how_to_run.md).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SANITIZE := --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: venv book test chapters clean

venv: $(STAMP)

# Re-run pip only when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Vendored JS (tools/fetch_assets.py), then jupyter-book build -W; prints the index.html path.
book: venv
	$(BIN)/python tools/build_book.py

# One pytest session: unit tests, papermill runs, nbval on the committed chapters, the browser.
test: venv book
	$(BIN)/python -m pytest --nbval $(SANITIZE) --durations=15 tests/ chapters/

# Re-execute the chapters and store their outputs (the book renders these).
chapters: venv
	$(BIN)/python tools/execute_chapters.py

clean:
	rm -rf _build book/assets/vendor
