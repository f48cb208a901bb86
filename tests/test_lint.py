"""The linter is part of the test command: ``ruff check`` over every Python file of the repository
(configured in ``pyproject.toml``: pyflakes, pycodestyle at 120 columns, import order, bugbear, and
no ``noqa`` marker that silences nothing). Notebooks are read, not linted."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def ruff() -> str:
    beside = pathlib.Path(sys.executable).with_name("ruff")       # the venv's, pinned in requirements.txt
    found = str(beside) if beside.exists() else shutil.which("ruff")
    assert found, "ruff is not installed: pip install -r requirements.txt"
    return found


def test_ruff_finds_nothing():
    done = subprocess.run([ruff(), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ruff check . found problems:\n{done.stdout}{done.stderr}"


def test_ruff_would_find_a_problem(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    done = subprocess.run([ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "F401" in done.stdout
