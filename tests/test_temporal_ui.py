"""The operators' view in the real Temporal UI: a dev server WITH its UI (started here on free
ports), loops in several states, the UI's saved columns set to the loop's search attributes,
rendered by headless Chromium filtered by LoopState."""

from __future__ import annotations

import asyncio
import re
import socket
import urllib.parse
from datetime import datetime, timezone

import pytest

from refloop.config import Settings
from refloop.devserver import start_dev_server, wait_for_ui
from refloop.gateways.dispatch import signal_event
from refloop import temporal as names
from refloop.temporal import connect, workflow_id
from refloop.ui import LOOP_COLUMNS, STORAGE_KEY, local_storage_items
from tests.browser import dump_dom, screenshot, seed_local_storage
from tests.conftest import unique
from tests.factories import happy_path
from tests.receivers import eventually
from workers.main import build_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def ui_server():
    port, ui_port = _free_port(), _free_port()
    proc = start_dev_server(port, ui_port)
    try:
        assert await asyncio.to_thread(wait_for_ui, ui_port), "Temporal UI did not come up"
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except Exception:
            proc.kill()


async def test_ui_lists_loops_by_state_with_loop_columns(ui_server, store, tmp_path):
    address, ui = ui_server
    client = await connect(address)
    task_queue = f"ui-{unique()}"
    booked = [unique("UIBOOK") for _ in range(2)]
    ordered = unique("UIORD")
    now = datetime.now(timezone.utc)
    async with build_worker(client, Settings(task_queue=task_queue), store):
        for rid in booked:
            for e in happy_path(rid, now, priority="urgent")[:2]:
                await signal_event(client, task_queue, rid, e)
        await signal_event(client, task_queue, ordered, happy_path(ordered, now)[0])
        query = f'TaskQueue="{task_queue}" AND LoopState="scheduled"'
        assert await eventually(lambda: _count(client, query, 2), timeout=30)

        url = f"{ui}/namespaces/default/workflows?query=" + urllib.parse.quote('LoopState="scheduled"')
        # Without saved columns the UI lists the loops but none of their attributes.
        plain = await asyncio.to_thread(dump_dom, tmp_path / "plain-profile", url)
        assert all(workflow_id(rid) in plain for rid in booked)
        assert names.LOOP_STATE.name not in _headers(plain)

        profile = tmp_path / "chromium-profile"
        stored = await asyncio.to_thread(seed_local_storage, profile, ui, local_storage_items("default"))
        assert stored[STORAGE_KEY] == local_storage_items("default")[STORAGE_KEY]

        dom = await asyncio.to_thread(dump_dom, profile, url)
        for rid in booked:
            assert workflow_id(rid) in dom, f"{rid} missing from the UI list"
        assert workflow_id(ordered) not in dom  # filtered out by LoopState
        header_text = _headers(dom)
        for column in LOOP_COLUMNS:
            assert column in header_text, f"column {column} not shown; headers: {header_text[:500]}"
        assert "urgent" in dom and "CT" in dom  # the attribute values render in their columns

        shot = await asyncio.to_thread(screenshot, profile, url, tmp_path / "temporal-ui-scheduled.png")
        assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def _headers(dom: str) -> str:
    cells = re.findall(r"<th[^>]*>(.*?)</th>", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", c) for c in cells)


async def _count(client, query: str, n: int) -> bool:
    return (await client.count_workflows(query)).count == n
