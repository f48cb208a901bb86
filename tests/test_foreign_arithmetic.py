"""Every chapter, run in full a second time under another arithmetic, still asserts every claim.

A reader's machine never has the arithmetic the chapters were executed with: another CPU model
takes other code paths, and a trained model ends elsewhere in its last bits (or, for a chaotic
seed, somewhere else entirely). This test reproduces that on the developer's own machine: it runs
``pytest --nbval`` on the chapters in a child session with ``MEMORYLIB_NUMERICS=foreign``
(conftest.py applies :data:`memorylib.reproducible.FOREIGN_ENV`, two threads instead of one), after
checking that this really changes the fingerprint. In that session every cell runs, every claim
is asserted in its robust form (the exact forms need :func:`memorylib.reproducible.same_numerics`),
and every output not tagged ``depends-on-arithmetic`` is still compared with the committed one.
Its chapter times are printed with the others at the end of the session.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import chapter_times
from memorylib import reproducible

ROOT = pathlib.Path(__file__).resolve().parents[1]
FINGERPRINT = "from memorylib import reproducible; print(reproducible.fingerprint())"


def foreign_environment() -> dict:
    env = dict(os.environ, MEMORYLIB_NUMERICS="foreign")
    reproducible.apply(env, reproducible.FOREIGN_ENV)
    return env


def test_the_foreign_arithmetic_changes_the_fingerprint():
    there = subprocess.run([sys.executable, "-c", FINGERPRINT], env=foreign_environment(), cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert len(there) == 16 and there != reproducible.fingerprint()


@pytest.mark.timeout(3600)
def test_every_chapter_holds_under_a_foreign_arithmetic(tmp_path):
    times = tmp_path / "chapter_times.json"
    env = foreign_environment()
    env["MEMORYLIB_CHAPTER_TIMES"] = str(times)
    cmd = [sys.executable, "-m", "pytest", "--nbval", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg",
           "-p", "no:cacheprovider", "-q", "chapters/"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for name, kinds in json.loads(times.read_text()).items() if times.exists() else []:
        chapter_times.setdefault(name, {}).update(kinds)
    assert done.returncode == 0, (f"under a foreign arithmetic: {' '.join(cmd)}\n"
                                  f"{done.stdout[-6000:]}{done.stderr[-2000:]}")
