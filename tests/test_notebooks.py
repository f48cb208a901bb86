"""Chapter notebooks: committed executed in order, run end to end with FAST=True under papermill.

`pytest --nbval chapters/` (same run, see the README) re-executes them in full and compares every
output with the committed one.
"""

import json
import pathlib
import re
import time

import nbformat
import papermill
import pytest

from conftest import chapter_times   # the run-time table printed at the end of the session

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9]*.ipynb"))


def repository_url() -> str:
    text = (ROOT / "_config.yml").read_text()
    match = re.search(r"^repository:\s*\n(?:\s+.*\n)*?\s+url:\s*(\S+)", text, re.M)
    assert match, "_config.yml has no repository.url"
    return match.group(1).strip("'\"")


def test_there_are_chapters():
    assert CHAPTERS, "no chapter notebooks found"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_committed_notebook_is_executed_in_order_and_clean(path):
    assert path.stat().st_size < 3_000_000, "keep a chapter under 3 MB"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "re-run the chapter top to bottom on a fresh kernel"
    for cell in code:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"committed error output in: {cell.source[:60]}"
            text = json.dumps(out.get("text", "")) + json.dumps(out.get("data", {}).get("text/plain", ""))
            assert not re.search(r"(/tmp/|/root/|/work/|/home/)\w", text), "an output shows a local path"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "FAST = False" in params[0].source
    install = code[0].source
    assert "google.colab" in install and f"git+{repository_url()}" in install, \
        "the first cell must install memorylib from the repository in _config.yml when in Colab"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_runs_fast_under_papermill(path, tmp_path):
    start = time.perf_counter()
    papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters={"FAST": True},
                               cwd=str(path.parent), kernel_name="python3", progress_bar=False,
                               execution_timeout=600, start_timeout=120)
    seconds = time.perf_counter() - start
    chapter_times.setdefault(path.name, {})["fast"] = seconds
    # Not asserted: wall time depends on what else the machine runs (a timed test flakes). The
    # run time of every chapter, FAST and full, is printed against its budget at the end of the
    # session (conftest.py), flagged OVER BUDGET when it is.
