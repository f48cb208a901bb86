# Build and check the book.   make book | make test | make chapters | make clean | make benchmark
# Everything runs in .venv, made from the pinned requirements.txt (see book/how_to_run.md).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SANITIZE := --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: venv book test chapters clean benchmark

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

# One pytest session: the linter, unit tests, the chapters under nbval (native and foreign
# arithmetic), the reader's path, and the browser (which builds the book itself, once).
test: venv
	$(BIN)/python -m pytest --nbval $(SANITIZE) --durations=15 tests/ chapters/

# Re-execute the chapters and store their outputs (the book renders these).
chapters: venv
	$(BIN)/python tools/execute_chapters.py

# Speed and memory of the memory modules against full attention and titans-pytorch (chapter 6):
# its own .venv-bench (the book's pins do not include titans-pytorch); writes
# book/results/ch06_benchmark.json. About 4 minutes on 2 cores; see benchmarks/README.md.
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): benchmarks/requirements-titans.txt pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-titans.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

benchmark: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/memory_speed.py

clean:
	rm -rf _build book/assets/vendor
