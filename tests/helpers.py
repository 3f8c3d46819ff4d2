"""Small async helpers for tests that drive loops through a real Temporal server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from temporalio.client import Client

from refloop.domain.events import EventBase
from refloop.domain.loop import Loop
from refloop.gateways.dispatch import signal_event
from refloop.temporal import workflow_id


async def send(client: Client, task_queue: str, rid: str, *events: EventBase) -> None:
    for e in events:
        await signal_event(client, task_queue, rid, e)


async def state(client: Client, rid: str) -> Loop:
    return await client.get_workflow_handle(workflow_id(rid)).query("state", result_type=Loop)


async def wait_for(client: Client, rid: str, predicate: Callable[[Loop], bool], timeout: float = 15.0) -> Loop:
    """Poll the `state` query until predicate holds; return the last state either way."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        loop = await state(client, rid)
        if predicate(loop) or asyncio.get_running_loop().time() > deadline:
            return loop
        await asyncio.sleep(0.05)


async def eventually(check: Callable[[], object], timeout: float = 15.0, interval: float = 0.2):
    """Retry an async or sync check until it returns truthy (visibility is eventually consistent)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(interval)
