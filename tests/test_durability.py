"""Nothing is lost: a worker killed mid-loop, and a burst of signals across continue-as-new."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from refloop.config import Settings
from refloop.devserver import find_binary
from refloop.domain import events as ev
from refloop.domain.loop import Outcome, Stage
from refloop.temporal import SEARCH_ATTRIBUTES, workflow_id
from tests.conftest import unique
from tests.factories import acknowledged, delivered, happy_path
from tests.helpers import eventually, send, wait_for
from workers.main import build_worker


def start_worker_process(address: str, task_queue: str, data_dir) -> subprocess.Popen:
    env = {**os.environ, "REFLOOP_TEMPORAL_ADDRESS": address, "REFLOOP_TASK_QUEUE": task_queue, "REFLOOP_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)
    return subprocess.Popen([sys.executable, "-m", "workers.main"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_worker_killed_mid_loop_loses_nothing(client, task_queue, tmp_path):
    address = client.service_client.config.target_host
    rid = unique()
    t0 = datetime.now(timezone.utc)
    events = happy_path(rid, t0) + [delivered(rid, t0), acknowledged(rid, t0)]
    worker = start_worker_process(address, task_queue, tmp_path)
    try:
        await send(client, task_queue, rid, *events[:4])
        loop = await wait_for(client, rid, lambda lp: len(lp.timeline) == 4, timeout=30)
        assert loop.stage == Stage.IN_PROGRESS
        worker.send_signal(signal.SIGKILL)  # no graceful anything
        worker.wait(timeout=10)
        # The world goes on while no worker runs: Temporal keeps every signal.
        await send(client, task_queue, rid, *events[4:])
        worker = start_worker_process(address, task_queue, tmp_path)
        loop = await wait_for(client, rid, lambda lp: lp.stage == Stage.CLOSED, timeout=30)
        assert (loop.stage, loop.outcome) == (Stage.CLOSED, Outcome.COMPLETED)
        assert [t.event_id for t in loop.timeline] == [e.event_id for e in events]
    finally:
        worker.send_signal(signal.SIGTERM)  # graceful: it must exit by itself
        assert worker.wait(timeout=20) == 0, worker.stderr.read().decode()[-2000:] if worker.stderr else ""


@pytest.fixture(scope="module")
async def can_env():
    """A server that suggests continue-as-new after 40 history events."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40", "--log-level", "error"],
    )
    yield env
    await env.shutdown()


async def test_signal_burst_across_continue_as_new_loses_nothing(can_env, task_queue, store):
    client = can_env.client
    rid = unique()
    t0 = datetime.now(timezone.utc)
    order, booking = happy_path(rid, t0 + timedelta(days=1))[:2]
    # 150 distinct reschedules from many concurrent senders, then the rest of the loop.
    burst = [
        ev.Rescheduled(event_id=f"{rid}-r{i}", occurred_at=t0, appointment=booking.appointment.model_copy(update={"station_name": f"room {i}"}))
        for i in range(150)
    ]
    async with build_worker(client, Settings(task_queue=task_queue), store):
        await send(client, task_queue, rid, order, booking)
        await asyncio.gather(*(send(client, task_queue, rid, e) for e in burst))
        loop = await wait_for(client, rid, lambda lp: len(lp.timeline) >= 152, timeout=60)
        ids = {t.event_id for t in loop.timeline}
        assert ids >= {e.event_id for e in burst} and len(loop.timeline) == 152
        assert loop.stage == Stage.SCHEDULED
        # It did continue as new (more than one run), carrying the whole state.
        async def continued_as_new() -> bool:
            return await _count_runs(client, rid) > 1  # visibility is eventually consistent

        assert await eventually(continued_as_new, timeout=20)
        # Every timeline entry reached SQL exactly once, across runs.
        assert await eventually(lambda: len(store.timeline(rid)) == 152, timeout=20)


async def _count_runs(client, rid) -> int:
    return len([w async for w in client.list_workflows(f'WorkflowId = "{workflow_id(rid)}"')])
