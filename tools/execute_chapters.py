"""Re-execute chapter notebooks top to bottom on a fresh kernel and store their outputs in place.

    python tools/execute_chapters.py                 # every chapter, full parameters
    python tools/execute_chapters.py chapters/01_memory_tasks.ipynb

The environment is the one nbval checks against (conftest.py: MEMORYLIB_BOOK=1 and scratch
Jupyter dirs), so the committed outputs are what `pytest --nbval` reproduces. papermill keeps the
ipywidgets state in the notebook metadata, which the static book renders as a snapshot. Volatile
papermill metadata (start/end times, durations) is removed so re-running gives clean diffs.
The wall time of every chapter is printed against its budget.
"""

from __future__ import annotations

import os
import pathlib
import runpy
import sys
import time

import nbformat
import papermill

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUDGET_S = 180


def write_atomically(nb, path: pathlib.Path) -> None:
    """Write the notebook beside its path, then rename it over: a stopped run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def strip_volatile(path: pathlib.Path, fingerprint: str) -> None:
    """Drop papermill's timings; record the numerical fingerprint the outputs were produced with
    (conftest.py compares outputs cell by cell only on a machine with the same one)."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata["memorylib"] = {"fingerprint": fingerprint}
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    write_atomically(nb, path)


def main(argv: list[str]) -> int:
    runpy.run_path(str(ROOT / "conftest.py"))        # same environment as the tests
    sys.path.insert(0, str(ROOT))
    from memorylib import reproducible  # after conftest set the environment
    fingerprint = reproducible.fingerprint()
    paths = [pathlib.Path(p) for p in argv] or sorted((ROOT / "chapters").glob("[0-9]*.ipynb"))
    for path in paths:
        # execute a copy (with this machine's fingerprint recorded, as the chapter reads it) and put it
        # in place only when every cell ran: a failing chapter leaves the committed one as it was
        # (papermill would otherwise store the error, and its own error cells, in the notebook)
        work = path.with_name(f".{path.stem}.executing.ipynb")
        nb = nbformat.read(path, as_version=4)
        nb.metadata["memorylib"] = {"fingerprint": fingerprint}
        nbformat.write(nb, work)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(str(work), str(work), cwd=str(path.parent), kernel_name="python3",
                                       progress_bar=False, execution_timeout=900, start_timeout=120)
        except papermill.PapermillExecutionError as err:
            print(f"{path.name}: FAILED in cell {err.exec_count}: {err.ename}: {err.evalue}; the committed "
                  f"notebook is unchanged, the failed run is in {work.name}", flush=True)
            return 1
        seconds = time.perf_counter() - start
        strip_volatile(work, fingerprint)
        os.replace(work, path)
        flag = "" if seconds <= BUDGET_S else f"  OVER BUDGET ({BUDGET_S} s)"
        print(f"{path.name}: {seconds:.1f} s{flag}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
