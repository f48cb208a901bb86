"""The built book in a real browser: it renders, draws every figure and widget, and stays offline.

Builds the book once (tools/build_book.py, the same build as `make book`), serves _build/html on
127.0.0.1 from a background thread, and opens the pages of _toc.yml in headless Debian Chromium
driven by playwright. Every request leaving localhost is blocked and recorded, so a page that
works here works with no network.

The fixtures are module-scoped: Chromium, playwright's driver and the server are gone before the
next test file runs, so nothing of theirs shares the two cores with the notebook kernels (or
with playwright's event loop, in the process that runs papermill).

Every chapter page is also laid out at a desktop width (1280 x 900, where the book's content
column is about 750 px) and a phone's (390 px), and checked for what a reader would see at once
(issue 19): no widget area left empty, no code or output block that scrolls sideways (nor the
page), and in every plotly figure no two text boxes intersecting (title, panel titles and other
annotations, legend, axis titles, slider, tick labels against all of those; tick labels against
each other at the desktop width only, where a token axis is not denser than the screen), no text
cut off at the figure's edge, and no title or legend over a plot area. A screenshot of every
figure at both widths is kept in _build/screenshots/<width>/ (CI uploads the folder).

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
SCREENSHOTS = ROOT / "_build" / "screenshots"
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


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


def wait_for_chapter(page, problems: dict) -> None:
    """Wait until every widget snapshot is rendered, every plotly figure has drawn and the math is
    typeset; fail if the page has no widget snapshot or no figure."""
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


@pytest.mark.parametrize("docname", CHAPTER_PAGES)
def test_chapter_page(browser, site, docname):
    page, problems, close = visit(browser, page_url(site, docname))
    wait_for_chapter(page, problems)

    # Launch button to Colab, pointing at this notebook in the configured repository.
    colab = [a.get_attribute("href") for a in
             page.locator('a[href^="https://colab.research.google.com/"]').all()]
    owner_repo, branch = repository()
    assert any(h.endswith(f"/github/{owner_repo}/blob/{branch}/{docname}.ipynb") for h in colab), colab
    # Binder: the theme's launch button and the chapter's own badge are one URL (JupyterLab).
    binder = {a.get_attribute("href") for a in page.locator('a[href^="https://mybinder.org/"]').all()}
    assert binder == {f"https://mybinder.org/v2/gh/{owner_repo}/{branch}?urlpath=lab/tree/{docname}.ipynb"}, binder
    close()



# --- what a reader sees: layout at a desktop and a phone width (issue 19) ------------------------

# Runs in the page; returns what is wrong with its layout (see the module docstring).
LAYOUT_PROBE = r"""(tickPairs) => {
  const box = e => { const r = e.getBoundingClientRect(); return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; };
  const area = r => Math.max(0, r.x1 - r.x0) * Math.max(0, r.y1 - r.y0);
  const meet = (a, b) => Math.min(a.x1, b.x1) - Math.max(a.x0, b.x0) > 1
                         && Math.min(a.y1, b.y1) - Math.max(a.y0, b.y0) > 1;
  const text = e => (e.textContent || "").trim().replace(/\s+/g, " ").slice(0, 50);
  const found = {emptyWidgets: [], overflow: [], figures: {}, pageOverflow: 0};

  // a widget's output area with nothing in it
  document.querySelectorAll(".widget-output").forEach(o => {
    if (!(o.innerText.trim() || o.querySelector("svg, img, canvas")) || o.getBoundingClientRect().height < 10)
      found.emptyWidgets.push(text(o.closest(".cell") || o) || "(a widget output)");
  });

  // code or output that scrolls sideways (a visible block wider than the room it has)
  document.querySelectorAll("div.cell_input pre, div.cell_output pre, div.cell_output .output, div.cell_output")
    .forEach(e => {
      if (e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1) {
        const where = e.closest(".cell_input") ? "code" : "output";
        const line = e.innerText.split("\n").reduce((m, l) => l.length > m.length ? l : m, "");
        found.overflow.push(`${where} block ${e.scrollWidth} px in ${e.clientWidth} px: ${line.slice(0, 80)}`);
      }
    });
  found.pageOverflow = document.documentElement.scrollWidth - window.innerWidth;

  // how many columns of code a code block holds on one line
  const pre = document.querySelector("div.cell_input div.highlight pre");
  if (pre) {
    const probe = document.createElement("span"), style = getComputedStyle(pre);
    probe.textContent = "M".repeat(100);
    probe.style.whiteSpace = "pre";
    pre.appendChild(probe);
    const room = pre.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    found.columns = Math.floor(100 * room / probe.getBoundingClientRect().width);
    probe.remove();
  }

  // text boxes of each plotly figure
  document.querySelectorAll(".plotly-graph-div").forEach((div, index) => {
    if (!div.querySelector("svg.main-svg")) return;
    const frame = box(div), boxes = [], problems = [];
    const add = (kind, e, group) => {
      const r = box(e), t = text(e);
      if (area(r) > 0 && (t || kind === "legend")) boxes.push({kind, r, t, group});
    };
    div.querySelectorAll(".g-gtitle .gtitle").forEach(e => add("title", e));
    div.querySelectorAll(".annotation").forEach(e => add("annotation", e));
    div.querySelectorAll("g.legend").forEach(e => add("legend", e.querySelector("rect.bg") || e));
    div.querySelectorAll("text[class$=title]").forEach(e => {
      if (/^[xy]\d*title$/.test(e.getAttribute("class"))) add("axis title", e);
    });
    div.querySelectorAll(".slider-container").forEach(e => add("slider", e));
    div.querySelectorAll("g[class$=tick] > text").forEach(e => {
      if (/^[xy]\d*tick$/.test(e.parentNode.getAttribute("class"))) add("tick", e, e.parentNode.parentNode);
    });
    const plots = [...div.querySelectorAll(".nsewdrag")].map(box);
    for (let a = 0; a < boxes.length; a++) for (let b = a + 1; b < boxes.length; b++) {
      const A = boxes[a], B = boxes[b];
      if (A.kind === "slider" && B.kind === "slider") continue;          // a slider's own parts
      if (A.kind === "tick" && B.kind === "tick" && (!tickPairs || A.group !== B.group)) continue;
      if (meet(A.r, B.r)) problems.push(`${A.kind} "${A.t}" runs into ${B.kind} "${B.t}"`);
    }
    for (const b of boxes) {
      if (b.r.x0 < frame.x0 - 1 || b.r.x1 > frame.x1 + 1 || b.r.y0 < frame.y0 - 1 || b.r.y1 > frame.y1 + 1)
        problems.push(`${b.kind} "${b.t}" is cut off at the figure's edge`);
      if (b.kind === "title" || b.kind === "legend")
        for (const p of plots) if (meet(b.r, p)) problems.push(`${b.kind} "${b.t}" covers a plot area`);
    }
    if (problems.length) {
      const title = div.querySelector(".g-gtitle .gtitle");
      found.figures[`figure ${index} (${title ? text(title) : "no title"})`] = [...new Set(problems)].slice(0, 8);
    }
  });
  return found;
}"""


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
@pytest.mark.parametrize("docname", CHAPTER_PAGES)
def test_chapter_page_layout(browser, site, docname, viewport):
    page, problems, close = visit(browser, page_url(site, docname))
    page.set_viewport_size(VIEWPORTS[viewport])
    wait_for_chapter(page, problems)
    page.wait_for_timeout(500)                   # plotly redraws at the new width
    found = page.evaluate(LAYOUT_PROBE, viewport == "desktop")

    # screenshots of every figure, for a person to look at (CI keeps _build/screenshots)
    folder = SCREENSHOTS / viewport
    folder.mkdir(parents=True, exist_ok=True)
    stem = pathlib.Path(docname).name
    for old in folder.glob(f"{stem}-*.png"):
        old.unlink()
    # the theme's sticky headers would cover the top of a figure scrolled into view (after the probe)
    page.add_style_tag(content=".bd-header, .bd-header-article { position: static !important; }")
    figures = page.locator(".plotly-graph-div")
    for i in range(figures.count()):
        figures.nth(i).scroll_into_view_if_needed()
        figures.nth(i).screenshot(path=str(folder / f"{stem}-{i:02d}.png"))

    if viewport == "desktop":
        assert found["columns"] >= 88, f"a code block holds {found['columns']} columns, not the 88 the chapters use"
    assert found["emptyWidgets"] == [], f"widget areas with nothing in them: {found['emptyWidgets']}"
    assert found["overflow"] == [], "blocks that scroll sideways:\n" + "\n".join(found["overflow"])
    assert found["pageOverflow"] <= 0, f"the page is {found['pageOverflow']} px wider than the screen"
    assert found["figures"] == {}, "figures with text running into text:\n" + "\n".join(
        f"{name}: {problems}" for name, problems in found["figures"].items())
    close()
