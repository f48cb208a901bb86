"""Small fixes to the HTML that Jupyter Book 1 (sphinx 7.4) writes, so pages load without errors.

Inline scripts added after the builder starts (sphinx-thebe's ``const THEBE_JS_URL = ...``,
sphinx-togglebutton's selector) are emitted twice on every page: sphinx registers them once
with ``filename=None`` and once more with ``filename=''``, so its own de-duplication misses
them. Declaring a ``const`` twice is a SyntaxError in the browser. This extension drops the
repeated copies, keeping the first.
"""

from __future__ import annotations


def drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for js in scripts:
        attributes = getattr(js, "attributes", {}) or {}
        key = (getattr(js, "filename", js) or "", tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


def setup(app):
    # priority 900: after myst-nb has added a page's widget scripts (default priority 500).
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
