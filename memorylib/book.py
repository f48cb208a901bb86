"""Notebook set-up shared by every chapter: seeds, threads, and how plotly figures are shown.

Introduced in chapter 1. Each chapter's first code cell calls :func:`setup` once.

Plotly's own renderer choice is kept for interactive use (Jupyter, Colab). When the environment
variable ``MEMORYLIB_BOOK=1`` is set (book builds, CI, nbval and the runs that produce the
committed outputs), figures are emitted twice in one display bundle:

* ``application/vnd.plotly.v1+json``: what Jupyter and nbval read;
* ``text/html``: a ``<div>`` plus a ``Plotly.newPlot`` call with a deterministic div id and no
  bundled plotly.js. The static book loads plotly.min.js once per page from its own assets, so
  the figure is interactive with no kernel and no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import torch

BOOK_ENV = "MEMORYLIB_BOOK"
RENDERER_NAME = "memorylib_book"
# Set (to the repository's URL) to make a kernel behave as Colab's does: install memorylib from the
# repository and fetch the book (tests/test_reader_path.py points it at a local copy).
REPO_ENV = "MEMORYLIB_REPO"
HEADLESS_ENV = "MEMORYLIB_HEADLESS"


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules


def book_mode() -> bool:
    """True when outputs are produced for the static book / CI (``MEMORYLIB_BOOK=1``)."""
    return os.environ.get(BOOK_ENV, "") not in ("", "0", "false", "False")


def headless() -> bool:
    """True when no person watches the kernel: the book's outputs are being produced
    (:func:`book_mode`), or ``MEMORYLIB_HEADLESS=1`` (tests that run a chapter the way a reader's
    kernel does, without the book renderer). Live widgets then skip their first drawing, which
    headless executors can deadlock on (:mod:`memorylib.widgets`)."""
    return book_mode() or os.environ.get(HEADLESS_ENV, "") not in ("", "0", "false", "False")


def fresh_kernel() -> bool:
    """True in a kernel that has only a notebook and no clone of the book: Colab, or any kernel
    with ``MEMORYLIB_REPO`` set (a chapter's first cell then installs memorylib from there)."""
    return in_colab() or bool(os.environ.get(REPO_ENV))


def installed_from() -> tuple[str, str | None]:
    """The repository URL and commit memorylib was installed from by ``pip install
    "memorylib @ git+URL"`` (pip records both in the distribution's ``direct_url.json``)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        text = distribution("memorylib").read_text("direct_url.json")
    except PackageNotFoundError:
        text = None
    info = json.loads(text) if text else {}
    if "vcs_info" not in info:
        raise RuntimeError("memorylib was not installed from a git repository, so the book's records cannot be "
                           'fetched: pip install "memorylib @ git+<the book\'s repository URL>"')
    return info["url"], info["vcs_info"].get("commit_id")


def fetch_book(dest: str | os.PathLike = "memory-book") -> pathlib.Path:
    """Make the book's files reachable from a kernel that has only the notebook (Colab).

    Clones the repository memorylib was installed from, at the same commit (so the code, the
    committed records under ``book/results`` and the checkpoints agree), into ``dest`` unless it
    is there, and changes the working folder to its ``chapters/``, where every chapter reads
    ``../book/results``. Does nothing when the working folder already is a chapters folder.
    Returns the chapters folder.
    """
    here = pathlib.Path.cwd()
    if (here.parent / "book" / "results").is_dir() and (here.parent / "memorylib").is_dir():
        return here
    url, commit = installed_from()
    dest = pathlib.Path(dest).resolve()
    if not (dest / "chapters").is_dir():
        # Cloned beside it and renamed when complete: an interrupted fetch leaves no half a book.
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["git", "clone", "--quiet", url, str(partial)], check=True)
        if commit:
            subprocess.run(["git", "-C", str(partial), "-c", "advice.detachedHead=false", "checkout", "--quiet",
                            commit], check=True)
        os.replace(partial, dest)
    os.chdir(dest / "chapters")
    return dest / "chapters"


def below(gap: float, limit: float) -> str:
    """How a parity check prints its gap: ``"below 1e-12"`` when ``gap < limit``, the bound the
    check asserts. The exact gap (1.1e-16 here, 1.6e-16 on another CPU) is rounding noise that
    differs between machines; the bound is the claim, and prints the same everywhere, so nbval
    compares the line on every machine. A gap at or over the limit prints as the number."""
    if not (isinstance(limit, (int, float)) and limit > 0):
        raise ValueError(f"below: limit must be a number > 0, got {limit!r}")
    gap = float(gap)
    return f"below {limit:.0e}" if gap < limit else f"{gap:.1e} (not below {limit:.0e})"


def _decimals(number: float) -> int:
    text = repr(float(number))
    return 0 if "e" in text or text.endswith(".0") else len(text.split(".")[1])


def close(measured, stated, tolerance: float, exact: bool) -> bool:
    """Whether a measured number (or a sequence of them) agrees with the number a chapter states.

    ``exact`` (a machine that reproduces the page, :func:`memorylib.reproducible.same_numerics`):
    equal at the precision it is stated with (``0.9861`` means four decimals). Elsewhere, where the
    same code lands in other last bits (a near tie decided the other way, a trained model a little
    elsewhere): within ``tolerance``. A non-finite measurement never agrees.
    """
    if isinstance(stated, (list, tuple)):
        if not isinstance(measured, (list, tuple)) or len(measured) != len(stated):
            raise ValueError(f"close: {len(stated)} stated numbers need as many measured ones, got {measured!r}")
        return all(close(m, s, tolerance, exact) for m, s in zip(measured, stated))
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ValueError(f"close: tolerance must be a number >= 0, got {tolerance!r}")
    measured = float(measured)
    if measured != measured or measured in (float("inf"), float("-inf")):
        return False
    if exact:
        return round(measured, _decimals(stated)) == stated
    return abs(measured - stated) <= tolerance


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) from one integer."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def figure_div_id(fig_dict: dict) -> str:
    """A div id derived from the figure's content, so re-running a notebook gives the same HTML."""
    payload = json.dumps(fig_dict, sort_keys=True, default=str).encode()
    return "fig-" + hashlib.sha1(payload).hexdigest()[:16]


def _make_renderer():
    from plotly.io.base_renderers import MimetypeRenderer

    class BookHtmlRenderer(MimetypeRenderer):
        """``text/html`` for the static book: deterministic div id, plotly.js loaded by the page."""

        def to_mimebundle(self, fig_dict: dict) -> dict[str, Any]:
            import plotly.io as pio

            html = pio.to_html(
                fig_dict,
                include_plotlyjs=False,
                include_mathjax=False,
                full_html=False,
                auto_play=False,
                div_id=figure_div_id(fig_dict),
                validate=False,
            )
            return {"text/html": html}

    return BookHtmlRenderer()


def register_book_renderer() -> str:
    """Register the book renderer and make ``plotly_mimetype+memorylib_book`` the default."""
    import plotly.io as pio

    if RENDERER_NAME not in pio.renderers:
        pio.renderers[RENDERER_NAME] = _make_renderer()
    pio.renderers.default = f"plotly_mimetype+{RENDERER_NAME}"
    return pio.renderers.default


class Settings(dict):
    """What :func:`setup` did: a dict (``seed``, ``threads``, ``torch``, ``book_mode``, ``colab``,
    ``renderer``) that a notebook shows as one short line rather than as a dict."""

    def __repr__(self) -> str:
        threads = self["threads"]
        parts = [f"seed {self['seed']}", f"{threads} thread{'' if threads == 1 else 's'}", f"torch {self['torch']}"]
        if self["book_mode"]:
            parts.append("figures for the book")
        if self["colab"]:
            parts.append("Colab")
        return "memorylib ready: " + ", ".join(parts)

    def _repr_pretty_(self, printer, cycle) -> None:      # IPython's display of a cell's last value
        printer.text(repr(self))


def setup(seed: int = 0, threads: int | None = None, deterministic: bool = True) -> Settings:
    """Prepare a chapter: seeds, a fixed thread count, deterministic kernels, the plotly renderer.

    ``threads`` is fixed because float32 results change in their last bits with the thread count.
    ``None`` (the default) keeps the count the environment chose with ``OMP_NUM_THREADS`` (the
    tests and ``tools/execute_chapters.py`` set the book's, :data:`memorylib.reproducible.THREADS`;
    CI's foreign-arithmetic run another) and otherwise uses the book's: one thread
    (:mod:`memorylib.reproducible` says what it costs and buys).
    In a fresh kernel (:func:`fresh_kernel`: Colab) it first fetches the book's files and moves to
    its ``chapters/`` folder (:func:`fetch_book`). Returns a small dict describing the environment
    (:class:`Settings`, shown as one line).
    """
    from . import reproducible

    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    if fresh_kernel():
        fetch_book()
    if threads is None:
        threads = torch.get_num_threads() if os.environ.get("OMP_NUM_THREADS") else reproducible.THREADS
    seed_everything(seed)
    torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    renderer = register_book_renderer() if book_mode() else None
    return Settings(seed=seed, threads=threads, torch=torch.__version__.split("+")[0], book_mode=book_mode(),
                    colab=in_colab(), renderer=renderer)
