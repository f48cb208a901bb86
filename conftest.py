"""Test-session environment, shared by unit tests, papermill runs and ``pytest --nbval``.

Kernels started by nbval and papermill inherit this process's environment, so the variables set
here are exactly the ones the committed chapter outputs were produced with (see tools/execute_chapters.py).
"""

import os
import pathlib
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent

# The book renderer (memorylib.book): plotly JSON + deterministic static HTML in one bundle.
os.environ["MEMORYLIB_BOOK"] = "1"
# Jupyter, IPython and Chromium write into the home folder; keep them in a scratch dir.
_scratch = pathlib.Path(os.environ.get("MEMORYLIB_SCRATCH", tempfile.gettempdir())) / "memorylib-test-home"
for var, sub in [("JUPYTER_CONFIG_DIR", "jupyter-config"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                 ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"), ("IPYTHONDIR", "ipython"),
                 ("XDG_CONFIG_HOME", "xdg-config"), ("XDG_CACHE_HOME", "xdg-cache")]:
    path = _scratch / sub
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(var, str(path))
# The book's numerical environment (memorylib/reproducible.py: one thread), before torch is imported
# anywhere, so that every number nbval compares is the same bit for bit on this machine. With
# MEMORYLIB_NUMERICS=foreign the session runs under another arithmetic instead (two threads): CI's
# second run of the chapters (tests/test_foreign_arithmetic.py), where every claim must still hold.
from memorylib import reproducible  # noqa: E402

FOREIGN = os.environ.get("MEMORYLIB_NUMERICS", "book") == "foreign"
reproducible.apply(variables=reproducible.FOREIGN_ENV if FOREIGN else None)


# --- chapter run times -----------------------------------------------------------------------
# `pytest --nbval chapters/` runs every chapter in full, one test item per cell; the papermill
# test (tests/test_notebooks.py) runs each with FAST=True. Both are summed per chapter and printed
# at the end of the run against the budgets, so CI output shows every chapter's runtime.
FULL_BUDGET_S, FAST_BUDGET_S = 180, 45
chapter_times: dict[str, dict[str, float]] = {}


FULL_KIND = "foreign" if FOREIGN else "full"
TIMES_ENV = "MEMORYLIB_CHAPTER_TIMES"   # a JSON file the session writes its chapter times to (the foreign run)


def pytest_runtest_logreport(report):
    if (report.when == "call" and report.nodeid.startswith("chapters/")
            and report.nodeid.split("::")[0].endswith(".ipynb")):
        name = report.nodeid.split("::")[0].split("/")[-1]
        chapter_times.setdefault(name, {}).setdefault(FULL_KIND, 0.0)
        chapter_times[name][FULL_KIND] += report.duration


def pytest_sessionfinish(session):
    target = os.environ.get(TIMES_ENV)
    if target:
        import json
        tmp = pathlib.Path(target + ".tmp")
        tmp.write_text(json.dumps(chapter_times))
        os.replace(tmp, target)


def pytest_terminal_summary(terminalreporter):
    if foreign_chapters:
        terminalreporter.section("chapters executed on another numerical platform")
        for name, (fp, skipped) in sorted(foreign_chapters.items()):
            terminalreporter.write_line(f"{name}: outputs recorded with fingerprint {fp}, not this machine's "
                                        f"{reproducible.fingerprint()}: every cell run and every claim asserted; "
                                        f"the outputs of {skipped} cell(s) tagged {ARITHMETIC_TAG} not compared")
    if not chapter_times:
        return
    terminalreporter.section("chapter run times (2-core budget: full <= 180 s, FAST <= 45 s; "
                             "foreign: full, other arithmetic; fast: the reader's path)")
    for name, times in sorted(chapter_times.items()):
        parts = []
        for kind, budget in (("full", FULL_BUDGET_S), ("foreign", FULL_BUDGET_S), ("fast", FAST_BUDGET_S)):
            if kind in times:
                over = "  OVER BUDGET" if times[kind] > budget else ""
                parts.append(f"{kind} {times[kind]:6.1f} s{over}")
        terminalreporter.write_line(f"{name:40s} " + "   ".join(parts))


# --- chapters executed on another CPU ------------------------------------------------------------
# The committed outputs are bit-exact only on a machine whose numerical fingerprint
# (memorylib.reproducible.fingerprint) equals the one recorded in the notebook's metadata when it
# was executed (tools/execute_chapters.py). Elsewhere a trained model ends in other last bits, or
# for a chaotic seed somewhere else entirely. So there nbval runs every cell (the claims cells
# assert what the chapter states, in the form that holds under any arithmetic) and compares every
# output except those of cells tagged `depends-on-arithmetic`: token strips, task tables, parity
# bounds and numbers read from committed records are compared on every machine; the summary says
# how many cells were left uncompared. MEMORYLIB_COMPARE_EVERY_CELL=1 compares them all (how the
# tagged cells were found: run the chapters under the foreign arithmetic with it and see what differs).
ARITHMETIC_TAG = "depends-on-arithmetic"
foreign_chapters: dict[str, tuple[str, int]] = {}


def compared(recorded: str | None, here: str, tags: list[str], compare_all: bool = False) -> bool:
    """Whether nbval compares a cell's output: always on the machine the chapter was executed on
    (same fingerprint), and elsewhere unless the cell is tagged as depending on the arithmetic."""
    return recorded == here or compare_all or ARITHMETIC_TAG not in tags


def pytest_collection_modifyitems(config, items):
    cells = [item for item in items if hasattr(item, "cell") and hasattr(item, "options")]
    if not cells:
        return
    import nbformat

    here = reproducible.fingerprint()
    compare_all = os.environ.get("MEMORYLIB_COMPARE_EVERY_CELL", "") not in ("", "0")
    recorded = {}
    for item in cells:
        path = str(item.fspath)
        if path not in recorded:
            meta = nbformat.read(path, as_version=4).metadata.get("memorylib", {})
            recorded[path] = meta.get("fingerprint")
        if not compared(recorded[path], here, item.cell.metadata.get("tags", []), compare_all):
            item.options["check"] = False
            name = pathlib.Path(path).name
            fp, skipped = foreign_chapters.get(name, (str(recorded[path]), 0))
            foreign_chapters[name] = (fp, skipped + 1)


def pytest_report_header(config):
    if config.option.nbval:
        return [f"memorylib numerical fingerprint of this machine: {reproducible.fingerprint()}"]
