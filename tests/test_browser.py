"""The built book in a real browser: it renders, draws every figure and widget, and stays offline.

Builds the book once (tools/build_book.py, the same build as `make book`), serves _build/html on
127.0.0.1 from a background thread, and opens the pages of _toc.yml in headless Debian Chromium
driven by playwright. Every request leaving localhost is blocked and recorded, so a page that
works here works with no network.

The fixtures are module-scoped: Chromium, playwright's driver and the server are gone before the
next test file runs, so nothing of theirs shares the two cores with the notebook kernels (or
with playwright's event loop, in the process that runs papermill).

Needs /usr/bin/chromium (`apt-get install chromium`) and the `playwright` package; without them
the tests skip, unless MEMORYLIB_REQUIRE_BROWSER=1 (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import pathlib
import subprocess
import sys
import threading
import urllib.parse

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
TIMEOUT_MS = 30_000


def toc_pages() -> tuple[str, list[str], list[str]]:
    """(root, chapter pages, other pages) from _toc.yml; chapters are the files under chapters/."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    chapters = [f for f in files if f.startswith("chapters/")]
    return toc["root"], chapters, [f for f in files if f not in chapters]


ROOT_PAGE, CHAPTER_PAGES, OTHER_PAGES = toc_pages()


def repository() -> tuple[str, str]:
    """(owner/name, branch) from _config.yml, the one place the repository is configured."""
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return urllib.parse.urlsplit(repo["url"]).path.strip("/"), repo.get("branch", "main")


def unavailable(reason: str) -> None:
    message = f"{reason}: the browser checks need it (Debian: `apt-get install chromium`)"
    if os.environ.get("MEMORYLIB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{message}; MEMORYLIB_REQUIRE_BROWSER=1 makes this an error", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def playwright_api():
    """playwright's sync API, or a skip/fail saying how to get a browser."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed")
    with sync_playwright() as api:
        yield api


@pytest.fixture(scope="module")
def site(playwright_api, tmp_path_factory):
    """Build the book and serve it; yields the base URL (http://127.0.0.1:PORT/)."""
    build = subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py")], cwd=ROOT,
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail("book build failed:\n" + (build.stdout + build.stderr)[-6000:], pytrace=False)

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output clean
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(HTML)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(playwright_api, tmp_path_factory):
    """A Chromium context with a fresh profile and home dirs, all under pytest's tmp dir."""
    home = tmp_path_factory.mktemp("chromium-home")
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache"), "XDG_DATA_HOME": str(home / "data")}
    context = playwright_api.chromium.launch_persistent_context(
        str(home / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        env=env, viewport={"width": 1280, "height": 900})
    yield context
    context.close()


def visit(context, url: str):
    """Open ``url`` and wait for its requests to settle. Returns (page, problems, close): problems
    collects console errors, page errors, off-host requests (blocked) and failed local requests
    while the page is open; ``close()`` lets late requests settle, closes the page and asserts
    that no problem was recorded."""
    problems = {"console errors": [], "page errors": [], "off-host requests": [], "failed requests": []}
    page = context.new_page()

    def route(route_):
        parts = urllib.parse.urlsplit(route_.request.url)
        if parts.scheme in ("http", "https") and parts.hostname not in LOCAL_HOSTS:
            problems["off-host requests"].append(route_.request.url)
            route_.abort()  # as if there were no network
        else:
            route_.continue_()

    inflight = set()
    page.route("**/*", route)
    page.on("request", lambda r: inflight.add(r))
    page.on("requestfinished", lambda r: inflight.discard(r))
    page.on("requestfailed", lambda r: inflight.discard(r))
    page.on("console", lambda msg: msg.type == "error" and problems["console errors"].append(
        f"{msg.text} @ {msg.location.get('url')}"))
    page.on("pageerror", lambda err: problems["page errors"].append(str(err)))
    page.on("response", lambda r: r.status >= 400 and problems["failed requests"].append(
        f"{r.status} {r.url}"))
    page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
    settle(page, inflight)

    def close():
        settle(page, inflight)
        page.close()
        assert {k: v for k, v in problems.items() if v} == {}

    return page, problems, close


def settle(page, inflight: set, quiet_ms: int = 500) -> None:
    """Wait until the page has had no request in flight for ``quiet_ms`` (lazy loads: MathJax
    extensions and fonts, widget fonts). Tracks the page's own requests rather than playwright's
    "networkidle", which also counts browser-internal requests and proved flaky here."""
    quiet = 0
    for _ in range(TIMEOUT_MS // 100):
        page.wait_for_timeout(100)
        quiet = 0 if inflight else quiet + 100
        if quiet >= quiet_ms:
            return
    raise AssertionError(f"requests still in flight after {TIMEOUT_MS} ms: "
                         f"{sorted(r.url for r in inflight)}")


def page_url(site: str, docname: str) -> str:
    return urllib.parse.urljoin(site, docname + ".html")


def wait_for_math(page, problems: dict) -> None:
    """If the page has math, MathJax (served by the book) must typeset it."""
    if page.locator(".math").count():
        with explained(problems, "MathJax to typeset the page"):
            page.wait_for_selector("mjx-container", state="attached", timeout=TIMEOUT_MS)


@contextlib.contextmanager
def explained(problems: dict, what: str):
    """On a playwright timeout, fail with what the page did wrong (the likely cause)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        yield
    except PlaywrightTimeout:
        pytest.fail(f"timed out waiting for {what}; page problems: "
                    f"{ {k: v for k, v in problems.items() if v} }", pytrace=False)


@pytest.mark.parametrize("docname", [ROOT_PAGE, *OTHER_PAGES])
def test_book_page_renders_offline(browser, site, docname):
    page, problems, close = visit(browser, page_url(site, docname))
    wait_for_math(page, problems)
    assert page.locator("article, main").count() > 0
    close()


@pytest.mark.parametrize("docname", CHAPTER_PAGES)
def test_chapter_page(browser, site, docname):
    page, problems, close = visit(browser, page_url(site, docname))

    # Widget snapshots: the embed manager replaces each view script with rendered DOM.
    views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
    assert views > 0, "no widget snapshot on the page (is widget state saved in the notebook?)"
    with explained(problems, "every widget snapshot to render"):
        page.wait_for_function(
            """() => [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
                     .every(s => s.previousElementSibling
                                 && s.previousElementSibling.querySelector('.jupyter-widgets'))""",
            timeout=TIMEOUT_MS)
    assert page.locator(".widget-subarea .jupyter-widgets").count() >= views

    # Plotly figures, including those inside widget outputs: each draws its SVG.
    figures = page.locator(".plotly-graph-div")
    assert figures.count() > 0, "no plotly figure on the chapter page"
    with explained(problems, "every plotly figure to draw its svg.main-svg"):
        page.wait_for_function(
            """() => [...document.querySelectorAll('.plotly-graph-div')]
                     .every(d => d.querySelector('svg.main-svg'))""", timeout=TIMEOUT_MS)

    wait_for_math(page, problems)

    # Launch button to Colab, pointing at this notebook in the configured repository.
    colab = [a.get_attribute("href") for a in
             page.locator('a[href^="https://colab.research.google.com/"]').all()]
    owner_repo, branch = repository()
    assert any(h.endswith(f"/github/{owner_repo}/blob/{branch}/{docname}.ipynb") for h in colab), colab
    # Binder: the theme's launch button and the chapter's own badge are one URL (JupyterLab).
    binder = {a.get_attribute("href") for a in page.locator('a[href^="https://mybinder.org/"]').all()}
    assert binder == {f"https://mybinder.org/v2/gh/{owner_repo}/{branch}?urlpath=lab/tree/{docname}.ipynb"}, binder
    close()
