"""Open a local HTML page in headless Chromium and report what a person would see: every image decoded or not,
console errors, network requests, and a full-page screenshot.

A tiny client for the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages separated by NUL bytes on
file descriptors 3 and 4): no selenium or playwright, and no browser download — the Debian package ``chromium``.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "install Chromium: apt-get install -y chromium (Debian/Ubuntu; .ci/run does it)"
_IMAGES = ("JSON.stringify([...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete, "
           "width: i.naturalWidth, height: i.naturalHeight})))")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    images: list[dict]  # src, complete, width, height (natural size: 0 = not decoded)
    errors: list[str]  # console errors, uncaught exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    screenshot: Path | None = None


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int, proc: subprocess.Popen):
        self.w, self.r, self.proc = write_fd, read_fd, proc
        self.buf, self.next_id, self.events = b"", 0, []

    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            ready, _, _ = select.select([self.r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._recv(deadline))


def check_page(html_path: Path, screenshot: Path | None = None, width: int = 1400, chromium: str | None = None,
               timeout: float = 60.0) -> PageCheck:
    """Load ``html_path`` from disk (file://, no server) and return what loaded, what failed and a screenshot."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError(INSTALL_HINT)
    profile = tempfile.mkdtemp(prefix="ncis-chromium-")
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def child_fds():  # Chromium reads commands on fd 3 and writes replies to fd 4
        a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
        os.dup2(a, 3)
        os.dup2(b, 4)

    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                             "--disable-background-networking", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                             "about:blank"],
                            preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(to_chrome_w, from_chrome_r, proc)
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        s = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.call(f"{domain}.enable", session=s)
        pipe.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False}, s)
        pipe.call("Page.navigate", {"url": Path(html_path).resolve().as_uri()}, s)
        pipe.wait_for("Page.loadEventFired", timeout)
        images = json.loads(pipe.call("Runtime.evaluate", {"expression": _IMAGES, "returnByValue": True},
                                      s)["result"]["value"])
        shot = None
        if screenshot is not None:
            height = pipe.call("Runtime.evaluate", {"expression": "document.documentElement.scrollHeight",
                                                    "returnByValue": True}, s)["result"]["value"]
            pipe.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": min(int(height), 16000),
                                                             "deviceScaleFactor": 1, "mobile": False}, s)
            data = pipe.call("Page.captureScreenshot", {"format": "png"}, s, timeout=timeout)["data"]
            shot = Path(screenshot)
            shot.write_bytes(base64.b64decode(data))
        errors, requests = [], []
        for e in pipe.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                errors.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}".strip())
            elif method == "Network.requestWillBeSent":
                requests.append(p["request"]["url"])
        pipe.call("Browser.close")
        return PageCheck(images, errors, requests, shot)
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
