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
# The book's numerical environment (memorylib/reproducible.py), before torch is imported anywhere:
# a fixed thread count and the CPU code paths of MKL, ATen and oneDNN pinned, so that float32 sums,
# and after hundreds of training steps every number nbval compares, are the same on any x86-64
# machine with AVX2, Intel or AMD. Does not import torch.
from memorylib import reproducible  # noqa: E402

reproducible.apply()


# --- chapter run times -----------------------------------------------------------------------
# `pytest --nbval chapters/` runs every chapter in full, one test item per cell; the papermill
# test (tests/test_notebooks.py) runs each with FAST=True. Both are summed per chapter and printed
# at the end of the run against the budgets, so CI output shows every chapter's runtime.
FULL_BUDGET_S, FAST_BUDGET_S = 180, 45
chapter_times: dict[str, dict[str, float]] = {}


def pytest_runtest_logreport(report):
    if report.when == "call" and report.nodeid.startswith("chapters/") and report.nodeid.split("::")[0].endswith(".ipynb"):
        name = report.nodeid.split("::")[0].split("/")[-1]
        chapter_times.setdefault(name, {}).setdefault("full", 0.0)
        chapter_times[name]["full"] += report.duration


def pytest_terminal_summary(terminalreporter):
    if foreign_chapters:
        terminalreporter.section("chapters executed on another numerical platform")
        for name, fp in sorted(foreign_chapters.items()):
            terminalreporter.write_line(f"{name}: outputs recorded with fingerprint {fp}, not this machine's "
                                        f"{reproducible.fingerprint()}: cells run and claims asserted, outputs "
                                        "not compared (re-execute with tools/execute_chapters.py)")
    if not chapter_times:
        return
    terminalreporter.section("chapter run times (2-core budget: full <= 180 s, FAST <= 45 s)")
    for name, times in sorted(chapter_times.items()):
        parts = []
        for kind, budget in (("full", FULL_BUDGET_S), ("fast", FAST_BUDGET_S)):
            if kind in times:
                over = "  OVER BUDGET" if times[kind] > budget else ""
                parts.append(f"{kind} {times[kind]:6.1f} s{over}")
        terminalreporter.write_line(f"{name:40s} " + "   ".join(parts))


# --- chapters executed on another CPU ------------------------------------------------------------
# The committed outputs are bit-exact only on a machine whose numerical fingerprint
# (memorylib.reproducible.fingerprint) equals the one recorded in the notebook's metadata when it
# was executed (tools/execute_chapters.py). Elsewhere training ends in other last bits, or for a
# chaotic seed somewhere else entirely, so nbval still runs every cell (the claims cells assert
# what the chapter states) but does not compare outputs cell by cell; the summary says so.
foreign_chapters: dict[str, str] = {}


def pytest_collection_modifyitems(config, items):
    cells = [item for item in items if hasattr(item, "cell") and hasattr(item, "options")]
    if not cells:
        return
    import nbformat

    here = reproducible.fingerprint()
    recorded = {}
    for item in cells:
        path = str(item.fspath)
        if path not in recorded:
            meta = nbformat.read(path, as_version=4).metadata.get("memorylib", {})
            recorded[path] = meta.get("fingerprint")
            if recorded[path] != here:
                foreign_chapters[pathlib.Path(path).name] = str(recorded[path])
        if recorded[path] != here:
            item.options["check"] = False


def pytest_report_header(config):
    if config.option.nbval:
        return [f"memorylib numerical fingerprint of this machine: {reproducible.fingerprint()}"]
