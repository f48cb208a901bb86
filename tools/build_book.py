"""Build the static book the one way CI does: vendored JavaScript, then Jupyter Book with -W.

    python tools/build_book.py [extra jupyter-book build options, e.g. --all]

Used by `make book` and by tests/test_browser.py, so both build the same thing. Warnings fail the
build (`-W`; `--keep-going` lists all of them first). Prints the absolute path of the front page.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import fetch_assets  # noqa: E402  (sibling script)


def main(extra: list[str]) -> int:
    fetch_assets.main()
    from jupyter_book.cli.main import main as jupyter_book

    # standalone_mode=False: return instead of sys.exit so the path can be printed; a failed
    # build still exits non-zero (jupyter-book raises or calls sys.exit itself).
    jupyter_book(["build", str(ROOT), "-W", "--keep-going", *extra],
                 prog_name="jupyter-book", standalone_mode=False)
    index = ROOT / "_build" / "html" / "index.html"
    if not index.exists():
        raise SystemExit(f"build_book: {index} was not written")
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
