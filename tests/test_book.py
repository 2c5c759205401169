"""The book: it builds with warnings as errors, its internal links resolve, and it renders in Chromium.

The book is built once per session into a temporary folder (``jupyter-book build book -W -n
--keep-going``), or taken from ``BOOK_HTML`` (a built ``_build/html`` folder) when that is set. The
rendering checks serve the site on 127.0.0.1 and drive headless Chromium over the Chrome DevTools
Protocol (a minimal websocket client below, stdlib only). They are skipped when Chromium is missing
(``apt-get install -y chromium``; ``CHROMIUM`` names another binary). Screenshots of every page go to
``BOOK_SCREENSHOTS`` (default: a temporary folder, printed in the test output).
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
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


# ---------------------------------------------------------------- a minimal CDP client

class DevTools:
    """Chrome DevTools Protocol over one websocket (RFC 6455 client: text frames, masked sends)."""

    def __init__(self, ws_url: str, timeout: float = 30) -> None:
        url = urllib.parse.urlsplit(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")
        self.next_id = 0
        self.events: list[dict] = []

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("DevTools connection closed")
        return chunk

    def _exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self._recv()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(c ^ mask[i & 3] for i, c in enumerate(payload)))

    def _message(self) -> dict:
        data = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = bytes(c ^ mask[i & 3] for i, c in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            if opcode == 0x9:
                self._send_frame(payload, 0xA)
                continue
            if opcode in (0x0, 0x1, 0x2):
                data += payload
                if b0 & 0x80:
                    return json.loads(data)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send_frame(json.dumps(message).encode())
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            reply = self._message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.events):
                if message["method"] == event:
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {event} within {timeout}s")
            self.sock.settimeout(remaining)
            message = self._message()
            if "method" in message:
                self.events.append(message)

    def close(self) -> None:
        self.sock.close()


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
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (Debian: apt-get install -y chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    log = open(profile.parent / "chromium.log", "wb")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "--window-size=1280,900",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail("Chromium did not start:\n" + (profile.parent / "chromium.log").read_text(errors="replace")[-3000:])
        time.sleep(0.1)
    port, path = port_file.read_text().split()[:2]
    devtools = DevTools(f"ws://127.0.0.1:{port}{path}")
    try:
        yield devtools
    finally:
        try:
            devtools.call("Browser.close", timeout=10)
        except (OSError, RuntimeError, ConnectionError):
            pass
        devtools.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the process group Chromium was started in, nothing else
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("BOOK_SCREENSHOTS") or tmp_path_factory.mktemp("book-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbook screenshots: {folder}")
    return folder


PROBE = """(async () => {
  await document.fonts.ready;
  await Promise.all([...document.images].map(i => i.complete ? 0 :
    new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  return {
    href: location.href,
    title: document.title,
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
  };
})()"""


def _visit(devtools: DevTools, session: str, url: str, expect_path: str) -> tuple[dict, list[dict]]:
    devtools.events.clear()
    devtools.call("Page.navigate", {"url": url}, session)
    deadline = time.monotonic() + 30
    while True:  # wait for the final page (index.html redirects) to finish loading
        state = devtools.call("Runtime.evaluate", {"expression": "[location.pathname, document.readyState]",
                                                   "returnByValue": True}, session)["result"]["value"]
        if state[0].endswith(expect_path) and state[1] == "complete":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not load {expect_path} (state {state})")
        time.sleep(0.1)
    reply = devtools.call("Runtime.evaluate", {"expression": PROBE, "awaitPromise": True, "returnByValue": True},
                          session)
    if "exceptionDetails" in reply:
        raise RuntimeError(f"probe failed on {url}: {reply['exceptionDetails']}")
    time.sleep(0.3)  # late requests (fonts, lazy scripts) show up as events
    devtools.call("Runtime.evaluate", {"expression": "1"}, session)
    return reply["result"]["value"], [e for e in devtools.events if e.get("sessionId") == session]


def _network_problems(events: list[dict], origin: str) -> list[str]:
    problems, urls = [], {}
    for event in events:
        params = event.get("params", {})
        if event["method"] == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            if url == f"{origin}/favicon.ico":
                continue  # the browser asks for it on its own; the book sets no favicon
            if not url.startswith((origin, "data:", "about:", "blob:")):
                problems.append(f"request to the network: {url}")
        elif (event["method"] == "Network.responseReceived" and params["response"]["status"] >= 400
              and not params["response"]["url"].endswith("/favicon.ico")):
            problems.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
        elif event["method"] == "Network.loadingFailed" and not params.get("canceled"):
            problems.append(f"failed ({params.get('errorText')}): {urls.get(params['requestId'], '?')}")
        elif event["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            problems.append(f"JavaScript error: {details.get('exception', {}).get('description') or details['text']}")
    return problems


def _screenshot(devtools: DevTools, session: str, path: Path, width: int = 1280, max_height: int = 8000) -> None:
    """The whole page: the viewport is made as tall as the page (capped), captured, then restored."""
    height = devtools.call("Runtime.evaluate", {"expression": "document.documentElement.scrollHeight",
                                                "returnByValue": True}, session)["result"]["value"]
    metrics = {"width": width, "deviceScaleFactor": 1, "mobile": False}
    devtools.call("Emulation.setDeviceMetricsOverride", {**metrics, "height": min(int(height), max_height)}, session)
    time.sleep(0.3)  # let the layout settle at the new size
    shot = devtools.call("Page.captureScreenshot", {"format": "png"}, session, timeout=60)
    path.write_bytes(base64.b64decode(shot["data"]))
    devtools.call("Emulation.setDeviceMetricsOverride", {**metrics, "height": 900}, session)


def test_pages_render_in_chromium(html_dir, site, browser, screenshots):
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Network", "Runtime"):
        browser.call(f"{domain}.enable", {}, session)
    browser.call("Emulation.setDeviceMetricsOverride",
                 {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
    root = toc_pages()[0]
    pages = [("index", f"{root}.html")] + [(page, f"{page}.html") for page in toc_pages()]
    problems = []
    for name, expect in pages:
        url = f"{site}/{'index.html' if name == 'index' else expect}"
        info, events = _visit(browser, session, url, "/" + expect)
        found = [f"{name}: {p}" for p in _network_problems(events, site)]
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
        _screenshot(browser, session, screenshots / f"{name.replace('/', '__')}.png")
        problems += found
    browser.call("Target.closeTarget", {"targetId": target})
    assert not problems, "rendering problems:\n" + "\n".join(problems)
