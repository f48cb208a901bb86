"""The reader's path: every chapter runs the way Colab runs it, from a folder holding only the notebook.

A fresh virtual environment gets only what Colab provides (torch, numpy, plotly, ipywidgets, nbformat,
ipykernel, tqdm: no jupyter-book, no pytest, no memorylib). Each chapter is copied alone into an
empty folder and executed there with FAST=True by papermill (from this session's environment) on a
kernel of that environment, with ``MEMORYLIB_REPO`` pointing at a git snapshot of this working tree:
the first cell then does what it does in Colab, ``pip install "memorylib @ git+<repo>"``, and
``memorylib.book.setup`` clones the repository at the installed commit and runs from its
``chapters/`` folder. Every claim the chapter asserts in its FAST form must hold.

The FAST run times are printed at the end of the session with the full ones (conftest.py).
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import time

import papermill
import pytest

from conftest import chapter_times

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9]*.ipynb"))
# What a Colab runtime has of what the chapters import; versions as pinned for the book.
# nbformat: plotly's fig.show() in a kernel
READER_PACKAGES = ("torch", "numpy", "plotly", "ipywidgets", "ipykernel", "nbformat", "tqdm")


def reader_requirements() -> list[str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = line.strip()
    missing = [name for name in READER_PACKAGES if name not in pins]
    assert not missing, f"requirements.txt pins none of {missing}"
    return [pins[name] for name in READER_PACKAGES]


def snapshot_repository(dest: pathlib.Path) -> pathlib.Path:
    """A git repository holding this working tree as it is (tracked and untracked, not ignored
    files), committed: what the reader's first cell installs from and fetches."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-C", str(dest), "-c", "user.name=reader", "-c", "user.email=reader@localhost"]
    subprocess.run(["git", "init", "--quiet", "--initial-branch=main", str(dest)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "snapshot of the working tree"], check=True)
    return dest


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    """The environment variables that select the reader's kernel (kernel name ``reader``, found
    through ``JUPYTER_PATH``) and the repository its first cell installs from."""
    base = tmp_path_factory.mktemp("reader")
    repo = snapshot_repository(base / "repo")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # Colab's pip is current; the one a Python 3.11 venv starts with (23.x) rejects git+file:// URLs.
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *reader_requirements()], check=True)
    shown = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in "
                            "('memorylib', 'jupyter_book', 'pytest', 'nbval', 'papermill') if u.find_spec(m)])"],
                           check=True, capture_output=True, text=True, cwd=base).stdout.strip()
    assert shown == "[]", f"the reader's environment must not have {shown}"
    kernels = base / "jupyter" / "kernels" / "reader"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps(
        {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "reader", "language": "python"}))
    return {"JUPYTER_PATH": str(base / "jupyter"), "MEMORYLIB_REPO": repo.as_uri()}


def test_without_memorylib_the_first_cell_says_how_to_install_it(reader, tmp_path, monkeypatch):
    """Outside Colab, with no memorylib and no MEMORYLIB_REPO: one line, saying how to install it.
    (Runs before the chapters below, which install memorylib into the reader's environment.)"""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", reader["JUPYTER_PATH"])
    for name in ("MEMORYLIB_REPO", "PYTHONPATH"):
        monkeypatch.delenv(name, raising=False)
    first = next(c for c in nbformat.read(CHAPTERS[0], as_version=4).cells if c.cell_type == "code")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(first.source)])
    NotebookClient(nb, kernel_name="reader", allow_errors=True, timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for o in nb.cells[0].outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "SystemExit", nb.cells[0].outputs
    assert "\n" not in errors[0].evalue and "pip install -e ." in errors[0].evalue
    assert "Colab" in errors[0].evalue


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_runs_from_an_empty_folder_like_colab(path, reader, tmp_path, monkeypatch):
    # The kernel inherits this environment: make it a reader's (no book renderer, no thread pin).
    for name in ("MEMORYLIB_BOOK", "OMP_NUM_THREADS", "PYTHONPATH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in reader.items():
        monkeypatch.setenv(name, value)
    # A live widget's first drawing under a headless executor can deadlock nbclient (it waited out
    # the 600 s cell timeout in chapters 1 and 4; memorylib.widgets): skip it, as the book's runs do.
    monkeypatch.setenv("MEMORYLIB_HEADLESS", "1")
    work = tmp_path / "colab"
    work.mkdir()
    notebook = shutil.copy(path, work / path.name)
    start = time.perf_counter()
    papermill.execute_notebook(str(notebook), str(work / ("out-" + path.name)), parameters={"FAST": True},
                               cwd=str(work), kernel_name="reader", progress_bar=False,
                               execution_timeout=300, start_timeout=120)
    chapter_times.setdefault(path.name, {})["fast"] = time.perf_counter() - start
    assert (work / "memory-book" / "chapters" / path.name).is_file(), "the first cell did not fetch the book"
    # Not asserted: wall time (a timed test flakes). It is printed against its budget (conftest.py).
