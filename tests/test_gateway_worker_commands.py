"""`refloop gateway` runs the gateways without a worker; `python -m workers.health` tells a
worker replica's health; a worker with the workflow sandbox off still runs loops."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from refloop.config import Settings
from refloop.domain.loop import Stage
from tests.conftest import unique
from tests.factories import acknowledged, delivered, happy_path
from tests.helpers import send, wait_for
from tests.hl7kit import ack_code
from tests.hl7kit import send as mllp_send
from workers.health import polling_here
from workers.main import build_worker

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_refloop_gateway_serves_without_a_worker(client, task_queue, tmp_path):
    from bench.mllp import loop_messages

    mllp, http = _free_port(), _free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        REFLOOP_TEMPORAL_ADDRESS=client.service_client.config.target_host,
        REFLOOP_NAMESPACE=client.namespace,
        REFLOOP_TASK_QUEUE=task_queue,
        REFLOOP_DATA_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'refloop.db'}",
        REFLOOP_BIND_HOST="127.0.0.1",
        REFLOOP_MLLP_PORT=str(mllp),
        REFLOOP_HTTP_PORT=str(http),
        REFLOOP_DICOM_PORT=str(_free_port()),
    )
    proc = subprocess.Popen([sys.executable, "-m", "refloop.cli.main", "gateway"], env=env, stderr=open(tmp_path / "gateway.log", "wb"))
    try:
        async with httpx.AsyncClient() as http_client:
            for _ in range(150):
                try:
                    if (await http_client.get(f"http://127.0.0.1:{http}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
            else:
                raise AssertionError("the HTTP gateway did not come up: " + (tmp_path / "gateway.log").read_text()[-2000:])
        rid = unique("GW")
        order = loop_messages(rid)[0]
        for _ in range(50):  # the MLLP listener may start a moment after HTTP
            try:
                ack = await mllp_send(mllp, order.encode())
                break
            except OSError:
                await asyncio.sleep(0.2)
        assert ack_code(ack) == "AA"  # durably handed to Temporal, with no worker anywhere
        assert not await polling_here(client, task_queue)
        described = await client.get_workflow_handle(f"referral-{rid}").describe()
        assert described.task_queue == task_queue  # the loop exists and waits for a worker
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


async def test_worker_health_is_per_replica(client, task_queue, store):
    assert not await polling_here(client, task_queue)
    async with build_worker(client, Settings(task_queue=task_queue), store):
        for _ in range(100):
            if await polling_here(client, task_queue):
                break
            await asyncio.sleep(0.1)
        assert await polling_here(client, task_queue)
        assert not await polling_here(client, task_queue, host="another-replica")
        assert not await polling_here(client, task_queue + "-other")


async def test_a_loop_closes_with_the_workflow_sandbox_off(client, task_queue, store):
    rid = unique()
    t0 = datetime.now(timezone.utc)
    settings = Settings(task_queue=task_queue, workflow_sandbox=False)
    worker = build_worker(client, settings, store)
    assert isinstance(worker.config()["workflow_runner"], UnsandboxedWorkflowRunner)
    default = build_worker(client, Settings(task_queue=task_queue + "-default"), store)
    assert isinstance(default.config()["workflow_runner"], SandboxedWorkflowRunner)
    async with worker:
        await send(client, task_queue, rid, *happy_path(rid, t0), delivered(rid, t0 + timedelta(hours=5.1)), acknowledged(rid, t0 + timedelta(hours=5.2)))
        loop = await wait_for(client, rid, lambda lp: lp.stage == Stage.CLOSED)
    assert loop.stage == Stage.CLOSED and loop.outcome == "completed"
