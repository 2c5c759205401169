"""Drop repeated <script> entries from every HTML page.

With Sphinx 7.4, sphinx-thebe's inline configuration script (``const THEBE_JS_URL = ...``) lands twice
in each page (once with filename None, once with ""; sphinx-togglebutton's selector too), and the
second copy throws "Identifier 'THEBE_JS_URL' has already been declared" in the browser. Keeping the
first of identical script entries removes that error and changes nothing else.
"""

from __future__ import annotations


def _unique(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        # an inline script is registered with filename None by one extension and "" by another
        key = (getattr(script, "filename", script) or "", repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _unique, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
