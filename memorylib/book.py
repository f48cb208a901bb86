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
import random
import sys
from typing import Any

import numpy as np
import torch

BOOK_ENV = "MEMORYLIB_BOOK"
RENDERER_NAME = "memorylib_book"


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules


def book_mode() -> bool:
    """True when outputs are produced for the static book / CI (``MEMORYLIB_BOOK=1``)."""
    return os.environ.get(BOOK_ENV, "") not in ("", "0", "false", "False")


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


def setup(seed: int = 0, threads: int = 2, deterministic: bool = True) -> dict[str, Any]:
    """Prepare a chapter: seeds, a fixed thread count, deterministic kernels, the plotly renderer.

    ``threads`` is fixed (default 2, the book's reference machine) because float32 results change
    in their last bits with the thread count, and the committed outputs are compared by nbval.
    Returns a small dict describing the environment, which chapters print.
    """
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    seed_everything(seed)
    torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    renderer = register_book_renderer() if book_mode() else None
    return {
        "seed": seed,
        "threads": threads,
        "torch": torch.__version__.split("+")[0],
        "book_mode": book_mode(),
        "colab": in_colab(),
        "renderer": renderer,
    }
