"""A minimal Chrome DevTools Protocol client for tests, on the standard library only.

Chromium is started with ``--remote-debugging-pipe``: it reads commands from file descriptor 3 and writes replies
and events to file descriptor 4, as NUL-terminated JSON messages (what Puppeteer's ``pipe: true`` does). No
WebSocket, no network port, no extra dependency.

Example:

```python
with HeadlessChromium() as browser:
    page = browser.new_page()
    page.navigate("file:///tmp/report.html")
    page.evaluate("document.title")
    page.screenshot("/tmp/report.png")
```
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")

# From the environment notes: no sandbox (root in a container), no GPU, and nothing that reaches the network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """The Chromium binary: ``$HF_FASTRM_CHROMIUM``, else the first of `CHROMIUM_CANDIDATES` on the PATH."""
    explicit = os.environ.get("HF_FASTRM_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    """A DevTools command failed, timed out, or the browser went away."""


class HeadlessChromium:
    """A headless Chromium with a fresh, empty profile, driven over the DevTools pipe.

    Args:
        binary (`str`, *optional*): the browser; defaults to [`find_chromium`].
        timeout (`float`, *optional*, defaults to 30): seconds to wait for any one reply.
        window_size (`tuple[int, int]`, *optional*): the viewport, for screenshots.
    """

    def __init__(self, binary: str | None = None, timeout: float = 30.0, window_size: tuple[int, int] = (1200, 900)):
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise CDPError("No Chromium found: run tests/browser/setup.sh (apt-get install chromium).")
        self.timeout = timeout
        self.window_size = window_size
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._condition = threading.Condition()
        self._closed = False
        self._process: subprocess.Popen | None = None

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> HeadlessChromium:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        self.profile_dir = tempfile.mkdtemp(prefix="hf-fastrm-chromium-")
        commands_read, commands_write = os.pipe()
        replies_read, replies_write = os.pipe()
        flags = [
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile_dir}",
            f"--window-size={self.window_size[0]},{self.window_size[1]}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # bash puts the pipe ends on descriptors 3 and 4, where Chromium expects them.
        script = f'exec "$0" "$@" 3<&{commands_read} 4>&{replies_write}'
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._process = subprocess.Popen(
            ["bash", "-c", script, self.binary, *flags],
            pass_fds=(commands_read, replies_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._commands = os.fdopen(commands_write, "wb", buffering=0)
        self._replies_file = os.fdopen(replies_read, "rb", buffering=0)
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()
        self.send("Browser.getVersion")

    def close(self) -> None:
        if self._process is None:
            return
        try:
            if self._process.poll() is None and not self._closed:
                self.send("Browser.close", timeout=5)
        except CDPError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        for stream in (self._commands, self._replies_file):
            with contextlib.suppress(OSError):
                stream.close()
        self._stderr.close()
        self._process = None
        shutil.rmtree(self.profile_dir, ignore_errors=True)

    def browser_log(self) -> str:
        """What Chromium wrote on stderr so far (for failure messages)."""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-4000:]

    # ------------------------------------------------------------------ protocol
    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._replies_file.read(65536)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._condition:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._condition.notify_all()
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Sends one command and waits for its reply; returns its ``result`` or raises [`CDPError`]."""
        with self._condition:
            if self._closed:
                raise CDPError(f"The browser has gone away.\n{self.browser_log()}")
            self._next_id += 1
            message_id = self._next_id
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        self._commands.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._condition:
            while message_id not in self._replies:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise CDPError(f"No reply to {method} ({'browser closed' if self._closed else 'timeout'}).")
                self._condition.wait(remaining)
            reply = self._replies.pop(message_id)
        if "error" in reply:
            raise CDPError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def wait_for_event(
        self, method: str, session_id: str | None = None, since: int = 0, timeout: float | None = None
    ) -> dict[str, Any]:
        """The first event `method` (of `session_id`) at or after index `since` of `events`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._condition:
            while True:
                for event in self.events[since:]:
                    if event.get("method") == method and (session_id is None or event.get("sessionId") == session_id):
                        return event
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise CDPError(f"No {method} event ({'browser closed' if self._closed else 'timeout'}).")
                self._condition.wait(remaining)

    def new_page(self) -> Page:
        """A new tab, attached in flat mode, with the Runtime, Log, Page and Network domains enabled."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Runtime", "Log", "Page", "Network"):
            page.send(f"{domain}.enable")
        return page


class Page:
    """One tab of a [`HeadlessChromium`]."""

    def __init__(self, browser: HeadlessChromium, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, session_id=self.session_id)

    def session_events(self) -> list[dict[str, Any]]:
        with self.browser._condition:
            return [event for event in self.browser.events if event.get("sessionId") == self.session_id]

    def navigate(self, url: str) -> None:
        """Loads `url` and waits for its load event."""
        since = len(self.browser.events)
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"Navigation to {url} failed: {result['errorText']}")
        self.browser.wait_for_event("Page.loadEventFired", self.session_id, since=since)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (an exception in it raises [`CDPError`])."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console errors and browser log errors (CSP violations, failed loads) so far."""
        found = []
        for event in self.session_events():
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(
                    "console: " + " ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"])
                )
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        return found

    def requested_urls(self) -> list[str]:
        """Every URL the page asked the network stack for (``data:`` URIs included)."""
        return [
            event["params"]["request"]["url"]
            for event in self.session_events()
            if event.get("method") == "Network.requestWillBeSent"
        ]

    def screenshot(self, path: str, full_page: bool = True) -> str:
        """Saves a PNG of the page (the whole scrollable page with `full_page`)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params)["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))
        return path
