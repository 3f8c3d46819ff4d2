"""Headless Chromium for UI tests: seed a profile's local storage over the DevTools protocol
(on a pipe: no websocket library needed), then render pages with `--dump-dom` / `--screenshot`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _Pipe:
    """Chrome DevTools protocol over --remote-debugging-pipe: JSON messages ended by NUL."""

    def __init__(self, profile: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4.
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=lambda: (os.dup2(to_chrome_r, 3), os.dup2(from_chrome_w, 4)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next = 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome, 65536)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def seed_local_storage(profile: Path, origin: str, items: dict[str, str], timeout: float = 20.0) -> dict[str, str]:
    """Open `origin` in the profile, store `items` in its local storage, close cleanly (so the
    profile is flushed to disk). Returns what the page then reads back."""
    pipe = _Pipe(profile)
    try:
        target = pipe.call("Target.createTarget", url=origin + "/")["targetId"]
        session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        deadline = time.monotonic() + timeout
        while pipe.call("Runtime.evaluate", session, expression="location.origin", returnByValue=True)["result"].get("value") != origin:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{origin} did not load")
            time.sleep(0.2)
        script = "(() => { const items = %s; for (const [k, v] of Object.entries(items)) localStorage.setItem(k, v);" \
                 " return Object.fromEntries(Object.keys(items).map(k => [k, localStorage.getItem(k)])); })()" % json.dumps(items)
        stored = pipe.call("Runtime.evaluate", session, expression=script, returnByValue=True)["result"]["value"]
    finally:
        pipe.close()
    return stored


def dump_dom(profile: Path, url: str, budget_ms: int = 10000) -> str:
    out = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    return out.stdout


def screenshot(profile: Path, url: str, path: Path, budget_ms: int = 10000, size: str = "1600,900") -> Path:
    subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", f"--window-size={size}", f"--screenshot={path}", url],
        capture_output=True, timeout=120,
    )
    return path
