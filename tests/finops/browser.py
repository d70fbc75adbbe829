"""Headless Chromium (Debian ``chromium``) driven over the DevTools protocol: open a page,
collect console errors and failed loads, inspect images, take a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

from agent.localnet import stop_process
from tests.support.net import wait_until


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    images: list[dict[str, Any]] = field(default_factory=list)
    scroll_width: int = 0
    viewport_width: int = 0
    # Per table box: how wide its table is against the room it has (wider scrolls sideways).
    tables: list[dict[str, Any]] = field(default_factory=list)
    screenshot: bytes = b""


class Chromium:
    def __init__(self, binary: str) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="steward-chromium-"))
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--no-first-run",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "--remote-allow-origins=*", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        wait_until(lambda: port_file.exists() and port_file.read_text().strip() != "",
                   timeout=30, what="chromium DevTools port")
        self.port = int(port_file.read_text().splitlines()[0])
        self._ids = itertools.count(1)

    def _page_socket(self) -> websocket.WebSocket:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list",
                                    timeout=10) as response:
            targets = json.load(response)
        page = next(t for t in targets if t["type"] == "page")
        return websocket.create_connection(page["webSocketDebuggerUrl"], timeout=20,
                                           suppress_origin=True)

    def _call(self, ws: websocket.WebSocket, events: list[dict[str, Any]], method: str,
              **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            events.append(message)

    def open(self, url: str, *, width: int, height: int = 900, mobile: bool = False,
             timeout: float = 20.0) -> PageResult:
        ws = self._page_socket()
        events: list[dict[str, Any]] = []
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                self._call(ws, events, f"{domain}.enable")
            self._call(ws, events, "Emulation.setDeviceMetricsOverride", width=width,
                       height=height, deviceScaleFactor=1, mobile=mobile)
            self._call(ws, events, "Page.navigate", url=url)
            deadline = time.monotonic() + timeout
            while not any(e.get("method") == "Page.loadEventFired" for e in events):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} did not finish loading in {timeout}s")
                events.append(json.loads(ws.recv()))
            state = self._call(ws, events, "Runtime.evaluate", returnByValue=True, expression=(
                "JSON.stringify({images: Array.from(document.images).map(i => ({chart: "
                "i.dataset.chart || null, complete: i.complete, width: i.naturalWidth, "
                "height: i.naturalHeight, shown: i.getBoundingClientRect().width})), "
                "tables: Array.from(document.querySelectorAll('.table-wrap')).map(w => ({"
                "heading: (w.closest('main') && Array.from(document.querySelectorAll('h2,h3'))"
                ".filter(h => h.compareDocumentPosition(w) & Node.DOCUMENT_POSITION_FOLLOWING)"
                ".map(h => h.textContent).pop()) || '', scroll: w.scrollWidth, "
                "client: w.clientWidth})), "
                "scroll: document.documentElement.scrollWidth, viewport: window.innerWidth})"))
            shot = self._call(ws, events, "Page.captureScreenshot", format="png",
                              captureBeyondViewport=True)
        finally:
            ws.close()
        page = json.loads(state["result"]["value"])
        result = PageResult(images=page["images"], scroll_width=int(page["scroll"]),
                            viewport_width=int(page["viewport"]), tables=page["tables"],
                            screenshot=base64.b64decode(shot["data"]))
        for event in events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                result.errors.append(f"console: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                result.errors.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                result.errors.append(f"log: {params['entry'].get('text')}")
            elif method == "Network.loadingFailed":
                result.errors.append(f"load failed: {params.get('errorText')}")
        return result

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.profile, ignore_errors=True)
