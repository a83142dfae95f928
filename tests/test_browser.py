"""The built book in a real browser, offline: every page of the table of contents.

For each page listed in ``_toc.yml`` this opens ``_build/html/<page>.html`` in headless Chromium and
asserts what a reader would see:

* the page loads nothing from the internet: every request is answered from ``_build/html`` (any
  other request fails the test), and the browser itself runs in a network namespace with no
  network (``unshare -n``) where that is available;
* math is typeset: as many MathJax outputs as the page has math elements, and no raw ``$$``,
  ``\\(`` or ``\\[`` left in the visible text outside code;
* every image has loaded (``naturalWidth > 0``);
* no JavaScript error and no failed resource in the console;
* every widget of the page shows its initial state (each embedded widget view rendered, none
  reporting an error), and no page holds an ipywidgets control (a slider that does nothing without
  a kernel);
* every explorer (an Altair/Vega-Lite chart, ``minimind_ref.lab.explorer``) has rendered, a chapter
  has as many as its code makes, and moving each of its sliders changes the figure, offline
  (``test_explorers_respond``).

The pages are served under a sub-path of a fake host (``http://book.test/minimind-textbook/``),
as a web host such as GitHub Pages would, so an absolute asset path would be caught; and each page is
also opened from disk (``file://``), as a reader who runs ``make book`` does.

Screenshots of every page in the theme's light and dark modes are saved under
``_build/screenshots/<page>.<mode>.<tile>.png`` as test artefacts (look at them): the first tile of
2400 pixels by default, the whole page with ``BOOK_SCREENSHOTS=all`` (``make screenshots``; a
chapter is some 20 tiles a mode, and each takes seconds to capture).
The browser is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``): no
extra Python package and no port.

Run ``make book`` first (``make test`` does); without a build or without ``chromium`` the test is
skipped with a message saying what to do (and fails instead when ``CI`` is set).
"""

from __future__ import annotations

import base64
import fcntl
import json
import mimetypes
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from minimind_ref.lab import REPO_URL

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
BASE = "http://book.test/minimind-textbook/"
WIDTH, TILE, MAX_HEIGHT = 1280, 2400, 100_000  # screenshot tiles of 1280 x 2400 pixels
PAGE_TIMEOUT = 60.0  # seconds for a page to load, typeset and render its widgets

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("font/woff2", ".woff2")
mimetypes.add_type("font/woff", ".woff")
mimetypes.add_type("image/svg+xml", ".svg")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def toc_pages() -> list[str]:
    """Every document of the table of contents, in reading order (root first)."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
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


def offline_wrapper() -> tuple[list[str], list[str], str]:
    """(command prefix, extra chromium flags, description) that keep the browser off the network."""
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix, [], f"`{' '.join(prefix)}` (a network namespace with no interfaces up)"
    # No namespaces (e.g. an unprivileged container): point every connection at a closed port.
    flags = [
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]
    return [], flags, "proxy to a closed port (unshare unavailable)"


class Browser:
    """A minimal DevTools-protocol client for Chromium over --remote-debugging-pipe."""

    def __init__(self, executable: str):
        prefix, flags, self.isolation = offline_wrapper()
        self.profile = tempfile.mkdtemp(prefix="book-chromium-")
        cmd_r, cmd_w = os.pipe()  # we write commands -> chromium reads fd 3
        ev_r, ev_w = os.pipe()  # chromium writes fd 4 -> we read
        # the child's ends go to fds >= 10 first, so that putting them on 3 and 4 cannot clobber them
        cmd_r, ev_w = (self._above_ten(fd) for fd in (cmd_r, ev_w))
        args = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--mute-audio",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            f"--window-size={WIDTH},900",
            *flags,
            "about:blank",
        ]
        # bash puts the two pipe ends on fds 3 and 4, where chromium expects them
        shell = f'exec "$@" 3<&{cmd_r} 4>&{ev_w} {cmd_r}<&- {ev_w}>&-'
        self.proc = subprocess.Popen(
            [*prefix, "bash", "-c", shell, "bash", *args],
            pass_fds=(cmd_r, ev_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(cmd_r)
        os.close(ev_w)
        self._out = os.fdopen(cmd_w, "wb", buffering=0)
        self._in = os.fdopen(ev_r, "rb", buffering=0)
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, queue.Queue] = {}
        self._listeners: dict[str, callable] = {}  # sessionId -> callback(method, params)
        self._stderr_tail: list[bytes] = []
        threading.Thread(target=self._read_loop, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.version = self.call("Browser.getVersion", timeout=30)["product"]

    @staticmethod
    def _above_ten(fd: int) -> int:
        new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return new

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self._stderr_tail = (self._stderr_tail + [line])[-20:]

    def _read_loop(self):
        buf = b""
        while True:
            chunk = self._in.read(1 << 16)
            if not chunk:
                for q in list(self._pending.values()):
                    q.put({"error": {"message": "browser closed the pipe"}})
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    q = self._pending.pop(msg["id"], None)
                    if q is not None:
                        q.put(msg)
                elif msg.get("sessionId") in self._listeners:
                    self._listeners[msg["sessionId"]](msg["method"], msg.get("params", {}))

    def send(self, method: str, params: dict | None = None, session: str | None = None, reply: bool = True):
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
            q = self._pending[msg_id] = queue.Queue() if reply else None
            if not reply:
                self._pending.pop(msg_id)
            msg = {"id": msg_id, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            self._out.write(json.dumps(msg).encode() + b"\0")
        return q

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        q = self.send(method, params, session)
        try:
            msg = q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{method}: no answer in {timeout} s") from None
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


class Tab:
    """One page: serves the book from _build/html, records console errors and external requests."""

    def __init__(self, browser: Browser):
        self.b = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.target = target
        self.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.errors: list[str] = []
        self.external: list[str] = []
        self.missing: list[str] = []
        self.loaded = threading.Event()
        browser._listeners[self.session] = self._on_event
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(method)
        self.call("Fetch.enable", {"patterns": [{"urlPattern": "*", "requestStage": "Request"}]})
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )

    def call(self, method, params=None, timeout=30.0):
        return self.b.call(method, params, session=self.session, timeout=timeout)

    def _on_event(self, method: str, params: dict):
        if method == "Fetch.requestPaused":
            self._serve(params)
        elif method == "Page.loadEventFired":
            self.loaded.set()
        elif method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text")
            self.errors.append(f"uncaught exception: {text} ({d.get('url', '')}:{d.get('lineNumber')})")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            e = params["entry"]
            self.errors.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())

    def _serve(self, params: dict):
        """Answer a request from _build/html; anything outside the book is an external request."""
        request_id, url = params["requestId"], params["request"]["url"]
        if url.startswith("file://"):  # a page opened from disk reads the build directly
            self.b.send("Fetch.continueRequest", {"requestId": request_id}, session=self.session, reply=False)
            return
        if urlsplit(url).path == "/favicon.ico" and not url.startswith(BASE):
            # the browser's own guess at the host root, not a request the page makes
            self.b.send(
                "Fetch.failRequest",
                {"requestId": request_id, "errorReason": "Aborted"},
                session=self.session,
                reply=False,
            )
            return
        if not url.startswith(BASE):
            self.external.append(url)
            self.b.send(
                "Fetch.failRequest",
                {"requestId": request_id, "errorReason": "InternetDisconnected"},
                session=self.session,
                reply=False,
            )
            return
        rel = unquote(urlsplit(url).path[len(urlsplit(BASE).path) :]) or "index.html"
        path = (HTML / rel).resolve()
        if rel.endswith("/"):
            path = path / "index.html"
        if HTML.resolve() in path.parents and path.is_file():
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            body, code = path.read_bytes(), 200
        else:
            self.missing.append(rel)
            ctype, body, code = "text/plain", b"not found", 404
        self.b.send(
            "Fetch.fulfillRequest",
            {
                "requestId": request_id,
                "responseCode": code,
                "responseHeaders": [{"name": "Content-Type", "value": ctype}],
                "body": base64.b64encode(body).decode(),
            },
            session=self.session,
            reply=False,
        )

    def evaluate(self, expression: str, timeout: float = 30.0):
        res = self.call(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, timeout=timeout
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluate failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str):
        self.loaded.clear()
        self.call("Page.navigate", {"url": url})
        if not self.loaded.wait(PAGE_TIMEOUT):
            raise TimeoutError(f"{url} did not finish loading in {PAGE_TIMEOUT} s")

    def screenshot(self, stem: Path) -> list[Path]:
        """The whole page, in tiles of TILE pixels: <stem>.01.png, <stem>.02.png, ..."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        height = min(height, MAX_HEIGHT if os.environ.get("BOOK_SCREENSHOTS") == "all" else TILE)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": min(height, TILE), "deviceScaleFactor": 1, "mobile": False},
        )
        paths = []
        for k, top in enumerate(range(0, height, TILE), start=1):
            clip = {"x": 0, "y": top, "width": WIDTH, "height": min(TILE, height - top), "scale": 1}
            data = self.call(
                "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}, timeout=60
            )["data"]
            path = stem.with_name(f"{stem.name}.{k:02d}.png")
            path.write_bytes(base64.b64decode(data))
            paths.append(path)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
        return paths

    def first_screen(self, path: Path, height: int = 800) -> Path:
        """What a reader sees first: the top WIDTH x height pixels of the page (the README's picture)."""
        clip = {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1}
        data = self.call("Page.captureScreenshot", {"format": "png", "clip": clip}, timeout=60)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self):
        self.b._listeners.pop(self.session, None)
        try:
            self.b.call("Target.closeTarget", {"targetId": self.target}, timeout=10)
        except Exception:
            pass


# Waits until the page is settled: MathJax has typeset and the widget manager has rendered every
# embedded view (or the time runs out). Returns what the assertions need.
SETTLE_JS = r"""
(async () => {
  const deadline = Date.now() + %(timeout_ms)d;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  for (const img of document.images) img.loading = "eager";
  const views = () => Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'));
  const rendered = (s) => {
    const area = s.previousElementSibling;
    return !!area && area.classList.contains("widget-subarea") && area.childElementCount > 0;
  };
  while (Date.now() < deadline) {
    const mjReady = !window.MathJax || !window.MathJax.startup || !!window.MathJax.startup.document;
    if (mjReady && window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
      await Promise.race([window.MathJax.startup.promise, sleep(1000)]);
    }
    const widgetsDone = views().every(rendered);
    const imagesDone = Array.from(document.images).every((i) => i.complete);
    const chartsDone = Array.from(document.querySelectorAll("div[id^='altair-viz-']"))
      .every((d) => d.querySelector("svg") || d.querySelector(".error"));
    if (mjReady && widgetsDone && imagesDone && chartsDone) break;
    await sleep(200);
  }
  await sleep(300);  // let the last layout settle before measuring and screenshots
  const math = document.querySelectorAll("div.math, span.math").length;
  const mjx = document.querySelectorAll("mjx-container").length;
  const mjxErrors = Array.from(document.querySelectorAll("mjx-merror"))
    .map((e) => e.getAttribute("data-mjx-error") || e.textContent);
  // visible text outside code: no raw TeX delimiters may remain
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, textarea, .highlight, mjx-container, .cell_input")
    .forEach((e) => e.remove());
  const text = clone.textContent;
  const raw = ["$$", "\\(", "\\["].filter((d) => text.includes(d)).map((d) => {
    const i = text.indexOf(d); return d + " near: " + JSON.stringify(text.slice(Math.max(0, i - 60), i + 60));
  });
  const images = Array.from(document.images)
    .map((i) => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}));
  const widgetViews = views().map((s, k) => {
    const area = s.previousElementSibling;
    const ok = rendered(s);
    return {k, ok, height: ok ? area.getBoundingClientRect().height : 0,
            error: !ok ? "not rendered"
              : area.textContent.includes("Error displaying widget") ? area.textContent.slice(0, 200) : ""};
  });
  const stateTags = document.querySelectorAll('script[type="application/vnd.jupyter.widget-state+json"]');
  const widgetState = stateTags.length;
  const widgetModels = Array.from(stateTags).flatMap((t) => {
    try { return Object.values(JSON.parse(t.textContent).state || {}).map((m) => m.model_name); }
    catch (e) { return ["unparsable widget state"]; }
  });
  const charts = Array.from(document.querySelectorAll("div[id^='altair-viz-']")).map((d) => ({
    id: d.id, svg: !!d.querySelector("svg"),
    error: (d.querySelector(".error") || {}).textContent || "",
    bindings: d.querySelectorAll(".vega-bindings input, .vega-bindings select").length,
  }));
  return {math, mjx, mjxErrors, raw, images, widgetViews, widgetState, widgetModels, charts,
          mathjaxLoaded: !!(window.MathJax && window.MathJax.version), title: document.title};
})()
"""


def notebook_code(docname: str) -> str:
    path = ROOT / f"{docname}.ipynb"
    if not path.exists():
        return ""
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def explorer_calls(docname: str) -> int:
    """How many explorers the notebook's code makes (calls of ``explorer(``, not its import)."""
    return sum(line.lstrip().startswith(("explorer(", "_ = explorer(")) for line in notebook_code(docname).splitlines())


#: ipywidgets models a reader would try to move: in a page without a kernel they do nothing
CONTROL_MODELS = {
    "IntSliderModel",
    "FloatSliderModel",
    "FloatLogSliderModel",
    "IntRangeSliderModel",
    "FloatRangeSliderModel",
    "SelectionSliderModel",
    "DropdownModel",
    "RadioButtonsModel",
    "ToggleButtonsModel",
    "CheckboxModel",
    "ToggleButtonModel",
    "ButtonModel",
    "TextModel",
    "IntTextModel",
    "FloatTextModel",
    "SelectModel",
}


PAGES = toc_pages()


def skip_or_fail(reason: str):
    """On a reader's machine a missing prerequisite skips the test; in CI it is a failure."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not (HTML / "index.html").exists():
        skip_or_fail("no built book in _build/html: run `make book` first (`make test` builds it)")
    exe = find_chromium()
    if exe is None:
        skip_or_fail(
            "chromium not found: install it to run the browser test (Debian/Ubuntu: `sudo apt-get install chromium`)"
        )
    SHOTS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    b = Browser(exe)
    print(f"\n{b.version}; offline by {b.isolation}")
    yield b
    b.close()
    print(f"\nbrowser test: {len(PAGES)} pages in {time.perf_counter() - start:.1f} s; screenshots in {SHOTS}")


def check_page(page: str, where: str, info: dict, errors: list, external: list, missing: list) -> None:
    """The assertions of one page load (``where``: how it was served)."""
    assert not external, f"{page} ({where}) tried to reach the internet: {external}"
    assert not missing, f"{page} ({where}) refers to files that are not in the build: {missing}"
    assert not errors, f"{page} ({where}) logged errors in the browser console: {errors}"
    if info["math"]:
        assert info["mathjaxLoaded"], f"{page} ({where}) has {info['math']} math elements but MathJax did not load"
        assert info["mjx"] >= info["math"], (
            f"{page} ({where}): only {info['mjx']} of {info['math']} math elements typeset"
        )
    assert not info["mjxErrors"], f"{page} ({where}): MathJax could not typeset: {info['mjxErrors']}"
    assert not info["raw"], f"{page} ({where}): raw TeX left in the visible text: {info['raw']}"
    broken = [i["src"] for i in info["images"] if not i["ok"]]
    assert not broken, f"{page} ({where}): images that did not load: {broken}"
    bad_views = [v for v in info["widgetViews"] if not v["ok"] or v["error"] or v["height"] <= 0]
    assert not bad_views, f"{page} ({where}): widget views without their initial state: {bad_views}"
    if info["widgetViews"]:
        assert info["widgetState"] == 1, f"{page} ({where}): widget views but no embedded widget state"
    dead = sorted(set(info["widgetModels"]) & CONTROL_MODELS)
    assert not dead, f"{page} ({where}): ipywidgets controls in the HTML, which do nothing without a kernel: {dead}"
    bad_charts = [c for c in info["charts"] if not c["svg"] or c["error"]]
    assert not bad_charts, f"{page} ({where}): explorers that did not render: {bad_charts}"
    wanted = explorer_calls(page)
    assert len(info["charts"]) >= wanted, (
        f"{page} ({where}): the notebook makes {wanted} explorers but the page shows {len(info['charts'])}"
    )


def load_and_settle(tab: Tab, url: str) -> dict:
    tab.open(url)
    return tab.evaluate(SETTLE_JS % {"timeout_ms": int(PAGE_TIMEOUT * 1000) - 5000}, timeout=PAGE_TIMEOUT)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_offline(browser, page):
    """Served from a web host under a sub-path: all checks, and the screenshots."""
    html_file = HTML / f"{page}.html"
    assert html_file.exists(), f"{page} is in _toc.yml but {html_file.relative_to(ROOT)} was not built"
    tab = Tab(browser)
    try:
        t0 = time.perf_counter()
        info = load_and_settle(tab, BASE + f"{page}.html")
        load_s = time.perf_counter() - t0
        stem = page.replace("/", "__")
        for old in SHOTS.glob(f"{stem}.*.png"):
            old.unlink()
        tab.screenshot(SHOTS / f"{stem}.light")
        if page == "intro":  # the README's picture of the book: `make readme-screenshot` copies it to docs/
            tab.first_screen(SHOTS / "intro.first-screen.png")
        tab.evaluate(
            "(async () => { document.documentElement.dataset.theme = 'dark';"
            " document.documentElement.dataset.mode = 'dark';"
            " await new Promise((r) => setTimeout(r, 300)); return true; })()"
        )
        tab.screenshot(SHOTS / f"{stem}.dark")
        errors, external, missing = list(tab.errors), list(tab.external), list(tab.missing)
    finally:
        tab.close()
    print(
        f"{page}: {load_s:.1f} s, {info['math']} math, {info['mjx']} typeset, {len(info['images'])} images, "
        f"{len(info['widgetViews'])} widget views, {len(info['charts'])} explorers"
    )
    check_page(page, "web host", info, errors, external, missing)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_from_disk(browser, page):
    """Opened as a file (file://...), as a reader who runs `make book` does: the same checks."""
    html_file = HTML / f"{page}.html"
    assert html_file.exists(), f"{page} is in _toc.yml but {html_file.relative_to(ROOT)} was not built"
    tab = Tab(browser)
    try:
        info = load_and_settle(tab, html_file.as_uri())
        errors, external, missing = list(tab.errors), list(tab.external), list(tab.missing)
    finally:
        tab.close()
    check_page(page, "file://", info, errors, external, missing)


# Moves every slider of every explorer in turn and reports whether the chart's SVG changed.
MOVE_SLIDERS_JS = r"""
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const fire = (el) => { el.dispatchEvent(new Event("input", {bubbles: true}));
                         el.dispatchEvent(new Event("change", {bubbles: true})); };
  const results = [];
  for (const chart of document.querySelectorAll("div[id^='altair-viz-']")) {
    const svg = () => (chart.querySelector("svg") || {}).innerHTML || "";
    const groups = new Map();  // one control per binding: a radio group counts once
    for (const el of chart.querySelectorAll(".vega-bindings input, .vega-bindings select")) {
      const key = el.type === "radio" ? "radio:" + el.name : "el:" + groups.size;
      if (!groups.has(key)) groups.set(key, el);
    }
    for (const [key, el] of groups) {
      const label = (el.closest(".vega-bind") || el.parentElement).textContent.trim().slice(0, 40);
      const before = svg();
      if (el.type === "range") {
        el.value = (Number(el.value) === Number(el.min)) ? el.max : el.min;
        fire(el);
      } else if (el.type === "radio") {
        const other = Array.from(chart.querySelectorAll(`input[type=radio][name="${el.name}"]`))
          .find((r) => !r.checked);
        if (other) { other.checked = true; other.click(); fire(other); }
      } else if (el.tagName === "SELECT") {
        el.selectedIndex = el.selectedIndex === 0 ? el.options.length - 1 : 0;
        fire(el);
      }
      let changed = false;
      for (let t = 0; t < 30 && !changed; t++) { await sleep(100); changed = svg() !== before; }
      results.push({chart: chart.id, control: label, changed});
    }
  }
  return results;
})()
"""


@pytest.mark.parametrize("page", [p for p in PAGES if explorer_calls(p)])
def test_explorers_respond(browser, page):
    """Offline, each slider of each explorer redraws its chart (no dead sliders in the HTML)."""
    tab = Tab(browser)
    try:
        info = load_and_settle(tab, BASE + f"{page}.html")
        moves = tab.evaluate(MOVE_SLIDERS_JS, timeout=PAGE_TIMEOUT)
        errors, external = list(tab.errors), list(tab.external)
    finally:
        tab.close()
    assert info["charts"], f"{page}: no explorer rendered"
    assert moves, f"{page}: explorers without sliders"
    dead = [m for m in moves if not m["changed"]]
    assert not dead, f"{page}: moving these sliders changed nothing: {dead}"
    assert not external and not errors, f"{page}: while moving sliders: {external or errors}"
    print(f"{page}: {len(moves)} sliders moved in {len(info['charts'])} explorers, each redrew its chart")


# ---- files of the build (these need the book built, not a browser) ---------------------------------

CHAPTER_NOTEBOOKS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", CHAPTER_NOTEBOOKS, ids=[p.stem for p in CHAPTER_NOTEBOOKS])
def test_built_chapter_has_colab_launch_button(path):
    html = ROOT / "_build" / "html" / "chapters" / f"{path.stem}.html"
    if not html.exists():
        skip_or_fail(f"{html.relative_to(ROOT)} not built: run `make book`")
    url = f"https://colab.research.google.com/github/{REPO_URL.removeprefix('https://github.com/')}/blob/main/chapters/{path.name}"
    assert url in html.read_text(encoding="utf-8"), f"{html.name} has no launch button to {url}"


def test_built_appendix_pages_have_no_launch_button():
    """The appendix's notebook pages read the repository's files: no Colab link to a .md that Colab cannot open."""
    pages = sorted((ROOT / "_build" / "html" / "appendix").glob("*.html"))
    if not pages:
        skip_or_fail("appendix/*.html not built: run `make book`")
    for html in pages:
        assert "colab.research.google.com/github" not in html.read_text(encoding="utf-8"), html.name


def test_built_minimind3_page_lists_every_chapter_box():
    html = ROOT / "_build" / "html" / "appendix" / "minimind3.html"
    if not html.exists():
        skip_or_fail("appendix/minimind3.html not built: run `make book`")
    text = html.read_text(encoding="utf-8")
    for md in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md")):
        if "What MiniMind-3 changed" in md.read_text(encoding="utf-8"):
            assert f"../chapters/{md.stem}.html#" in text, f"the MiniMind-3 page does not link {md.stem}'s box"
