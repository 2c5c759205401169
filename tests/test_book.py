"""The book: it builds with warnings as errors, its internal links resolve, and it renders in Chromium.

The book is built once per session into a temporary folder (``jupyter-book build book -W -n
--keep-going``), or taken from ``BOOK_HTML`` (a built ``_build/html`` folder) when that is set. The
rendering checks serve the site on 127.0.0.1 and drive the system's headless Chromium with Playwright
(``chromium`` on the PATH, or the binary that ``CHROMIUM`` names; Playwright's own browser download is
not used). Without Chromium they are skipped (Debian package ``chromium``), except under ``CI=true``,
where they fail. Screenshots of every page go to ``BOOK_SCREENSHOTS`` (default: a temporary folder,
printed in the test output).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

# slow: it builds the book (or reads BOOK_HTML); `make test-smoke` runs it on the smoke profile's book.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium")
MIN_TEXT = 200  # characters of article text below which a page counts as empty


# ---------------------------------------------------------------- the build and its pages

def toc_pages() -> list[str]:
    """Document names in the order of book/_toc.yml, root first."""
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [str(Path(p).with_suffix("")) for p in pages]


def jupyter_book() -> str:
    local = Path(sys.executable).with_name("jupyter-book")
    return str(local) if local.exists() else (shutil.which("jupyter-book") or "jupyter-book")


@pytest.fixture(scope="session")
def html_dir(tmp_path_factory) -> Path:
    prebuilt = os.environ.get("BOOK_HTML")
    if prebuilt:
        html = Path(prebuilt)
        assert (html / "index.html").is_file(), f"BOOK_HTML={prebuilt} holds no index.html"
        return html
    out = tmp_path_factory.mktemp("book")
    cmd = [jupyter_book(), "build", str(BOOK), "--path-output", str(out), "--warningiserror", "--nitpick",
           "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    if proc.returncode != 0:
        log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
        problems = [line for line in log.splitlines() if re.search(r"WARNING|ERROR|Error|Traceback", line)]
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(problems or log.splitlines()[-40:]))
    return out / "_build" / "html"


def test_every_toc_page_is_built(html_dir):
    missing = [page for page in toc_pages() if not (html_dir / f"{page}.html").is_file()]
    assert not missing, f"pages of _toc.yml not in the build: {missing}"
    assert (html_dir / "index.html").is_file()


class _Refs(HTMLParser):
    """Collects the ids of a page and its links (a, link, img, script, source, iframe)."""

    ATTRS = {"a": "href", "link": "href", "img": "src", "script": "src", "source": "src", "iframe": "src"}

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        url = attrs.get(self.ATTRS.get(tag, ""))
        if url:
            self.refs.append((tag, url))


@functools.cache
def _parse(path: Path) -> _Refs:
    parser = _Refs()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def _html_files(html_dir: Path) -> list[Path]:
    return sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.relative_to(html_dir).parts)


def test_internal_links_resolve(html_dir):
    broken = []
    for page in _html_files(html_dir):
        for tag, url in _parse(page).refs:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme or parts.netloc:
                continue  # external, data:, mailto:, javascript:
            target = (page.parent / urllib.parse.unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(html_dir)}: <{tag}> {url}"
            if not target.is_file():
                broken.append(f"{where} (no file {target})")
            elif parts.fragment and target.suffix == ".html" and parts.fragment not in _parse(target).ids:
                broken.append(f"{where} (no anchor #{parts.fragment})")
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_pages_load_nothing_from_the_network(html_dir):
    """Scripts, stylesheets, icons and images must be local: the book is read offline."""
    external = []
    for page in _html_files(html_dir):
        for tag, url in _parse(page).refs:
            if tag != "a" and url.startswith(("http:", "https:", "//")):
                external.append(f"{page.relative_to(html_dir)}: <{tag}> {url}")
    assert not external, "pages load resources from the network:\n" + "\n".join(external)




def test_pages_offer_download_launch_and_repository_buttons(html_dir):
    """Figure pages link their .ipynb, Colab and Binder; every page links the repository of _config.yml."""
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    repo = config["repository"]["url"].rstrip("/")
    slug = urllib.parse.urlsplit(repo).path.strip("/")
    branch, book = config["repository"]["branch"], config["repository"]["path_to_book"]
    missing = []
    for page in toc_pages():
        links = {url for tag, url in _parse(html_dir / f"{page}.html").refs if tag == "a"}
        expected = {repo}
        if page.startswith("figures/"):
            notebook = f"{book}/{page}.ipynb"
            assert (ROOT / notebook).is_file(), f"{notebook} is not in the repository: the launch links would break"
            expected |= {os.path.relpath(f"_sources/{page}.ipynb", Path(page).parent),
                         f"https://colab.research.google.com/github/{slug}/blob/{branch}/{notebook}",
                         f"https://mybinder.org/v2/gh/{slug}/{branch}?urlpath=tree/{notebook}"}
        missing += [f"{page}: no link {url}" for url in sorted(expected - links)]
    assert not missing, "buttons missing:\n" + "\n".join(missing)


# ---------------------------------------------------------------- server, browser, pages

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def site(html_dir):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(html_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium under Playwright: the system binary, never Playwright's download."""
    if not CHROMIUM or not Path(CHROMIUM).is_file():
        message = f"no Chromium ({CHROMIUM or 'chromium not on the PATH'}): install the Debian package chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the browser test must run)")
        pytest.skip(message)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-default-apps", "--hide-scrollbars"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("BOOK_SCREENSHOTS") or tmp_path_factory.mktemp("book-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbook screenshots: {folder}")
    return folder


PROBE = """async () => {
  await document.fonts.ready;
  await Promise.all([...document.images].map(i => i.complete ? 0 :
    new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  return {
    text: article.innerText.trim().length,
    rawTex: /\\$\\$|\\\\frac|\\\\begin\\{/.test(article.innerText),
    images: [...document.images].map(i => ({src: i.currentSrc || i.src, width: i.naturalWidth,
                                            inArticle: article.contains(i)})),
    sheets: [...document.querySelectorAll('link[rel="stylesheet"]')].map(l => ({href: l.href,
                                                        loaded: !!l.sheet && l.sheet.cssRules.length > 0})),
    theme: getComputedStyle(document.documentElement).getPropertyValue('--pst-color-primary').trim(),
    sidebar: !!document.querySelector('.bd-sidebar-primary a.reference'),
    math: [...article.querySelectorAll('math')].map(m => { const r = m.getBoundingClientRect();
                                                        return r.width > 0 && r.height > 0; }),
    mathErrors: article.querySelectorAll('code.math-error').length,
    height: document.documentElement.scrollHeight,
  };
}"""


def _is_local(url: str, origin: str) -> bool:
    return url.startswith((origin + "/", "data:", "about:", "blob:"))


def _visit(context, origin: str, url: str, expect_path: str, shot: Path) -> tuple[dict, list[str]]:
    """Load ``url`` (waiting for the redirect to ``expect_path``), probe it, screenshot it; its problems."""
    problems: list[str] = []

    def on_response(response) -> None:
        if response.status >= 400 and response.url != f"{origin}/favicon.ico":  # the book sets no favicon
            problems.append(f"HTTP {response.status}: {response.url}")

    def on_failure(request) -> None:  # refused outside requests are reported by the caller
        if _is_local(request.url, origin) and request.failure != "net::ERR_ABORTED":
            problems.append(f"failed ({request.failure}): {request.url}")

    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"JavaScript error: {error}"))
    page.on("response", on_response)
    page.on("requestfailed", on_failure)
    page.goto(url)
    page.wait_for_url(f"{origin}/{expect_path}", wait_until="load")
    info = page.evaluate(PROBE)
    page.wait_for_load_state("networkidle")  # late requests (fonts, lazy scripts) are seen too
    # the whole page, up to 8000 pixels tall
    page.screenshot(path=shot, full_page=True, clip={"x": 0, "y": 0, "width": 1280,
                                                      "height": min(info["height"], 8000)})
    page.close()
    return info, problems


def test_pages_render_in_chromium(html_dir, site, browser, screenshots):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1,
                                  service_workers="block")
    outside: list[str] = []

    def refuse(route):
        outside.append(route.request.url)
        route.abort()

    # nothing leaves the machine: a request that is not to the local server is recorded and refused
    context.route(lambda url: not _is_local(url, site), refuse)
    root = toc_pages()[0]
    pages = [("index", f"{root}.html")] + [(page, f"{page}.html") for page in toc_pages()]
    problems = []
    for name, expect in pages:
        url = f"{site}/{'index.html' if name == 'index' else expect}"
        outside.clear()
        try:
            info, found = _visit(context, site, url, expect, screenshots / f"{name.replace('/', '__')}.png")
        except PlaywrightError as error:
            problems.append(f"{name}: did not load: {error.message.splitlines()[0]}")
            continue
        found = [f"{name}: {p}" for p in found] + [f"{name}: request to the network: {u}" for u in outside]
        found += [f"{name}: image does not load: {i['src']}" for i in info["images"] if i["width"] == 0]
        found += [f"{name}: stylesheet not loaded: {s['href']}" for s in info["sheets"] if not s["loaded"]]
        if not info["theme"] or not info["sidebar"]:
            found.append(f"{name}: the theme's CSS or navigation is missing")
        if info["text"] < MIN_TEXT:
            found.append(f"{name}: page is empty ({info['text']} characters of text)")
        if name.startswith("figures/") and not any(i["inArticle"] and i["width"] > 0 for i in info["images"]):
            found.append(f"{name}: figure page shows no figure")
        if info["rawTex"] or info["mathErrors"] or not all(info["math"]):
            found.append(f"{name}: math not rendered (raw TeX: {info['rawTex']}, conversion errors: "
                         f"{info['mathErrors']}, empty formulas: {info['math'].count(False)})")
        if name == "method" and len(info["math"]) < 10:
            found.append(f"method: only {len(info['math'])} formulas rendered")
        problems += found
    context.close()
    assert not problems, "rendering problems:\n" + "\n".join(problems)
