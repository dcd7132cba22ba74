"""A headless Chromium driven over the DevTools protocol, for tests of pages served locally:
open a URL, take screenshots, run JavaScript, press keys. Debian's ``chromium`` (installed by
scripts/setup.sh); ``websockets`` (a dependency of viser) carries the protocol."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import numpy as np
from PIL import Image
from websockets.sync.client import connect


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Browser:
    """One headless Chromium page; use as a context manager (the browser is stopped by its
    process group's id at the end)."""

    def __init__(self, width: int = 1000, height: int = 700):
        executable = chromium_path()
        if executable is None:
            raise RuntimeError("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
        self.profile = tempfile.mkdtemp(prefix="mega-chromium-")
        self.port = free_port()
        # Software WebGL (SwiftShader): these machines have no GPU.
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._ids = itertools.count(1)
        self.socket = connect(self._page_socket_url(), max_size=None, open_timeout=30)

    def _page_socket_url(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as response:
                    pages = [t for t in json.loads(response.read()) if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("chromium's DevTools endpoint did not come up within 60 s")

    def call(self, method: str, **params) -> dict:
        """One DevTools command; its result (events in between are skipped)."""
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv(timeout=60))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str, timeout_s: float = 60) -> None:
        """Navigate and wait until the document has loaded."""
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.evaluate("document.readyState") == "complete" and self.evaluate("location.href") == url:
                    return
            except RuntimeError:  # between two documents: not attached yet
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{url} did not load within {timeout_s:.0f} s")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def screenshot(self, attempts: int = 20) -> np.ndarray:
        """[H, W, 3] uint8 of the page as it is now."""
        for attempt in range(attempts):
            try:
                data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
                break
            except RuntimeError:  # the page is between two frames or documents
                if attempt == attempts - 1:
                    raise
                time.sleep(0.25)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 10) -> None:
        """Press the left mouse button at ``start`` (CSS pixels), move to ``end``, release."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=start[0], y=start[1])
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=start[0], y=start[1], button="left",
                  clickCount=1)
        for k in range(1, steps + 1):
            x = start[0] + (end[0] - start[0]) * k / steps
            y = start[1] + (end[1] - start[1]) * k / steps
            self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left", buttons=1)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=end[0], y=end[1], button="left", clickCount=1)

    def click(self, point: tuple[float, float]) -> None:
        """A left click at ``point`` (CSS pixels)."""
        self.drag(point, point, steps=1)

    def box(self, selector_expression: str) -> tuple[float, float, float, float]:
        """(left, top, width, height) in CSS pixels of the element a JavaScript expression
        selects, scrolled into view first."""
        return tuple(self.evaluate(f"(() => {{ const e = {selector_expression}; e.scrollIntoView({{block: 'center'}}); "
                                   "const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()"))

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
