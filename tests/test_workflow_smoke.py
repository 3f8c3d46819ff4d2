import asyncio
from datetime import datetime, timedelta, timezone

from refloop.config import Settings
from refloop.gateways.dispatch import signal_event
from refloop.temporal import workflow_id
from tests.conftest import unique
from tests.factories import acknowledged, delivered, happy_path
from workers.main import build_worker
from workflows.referral import LoopSummary


async def test_happy_path_closes(client, task_queue, store):
    rid = unique()
    t0 = datetime.now(timezone.utc)
    async with build_worker(client, Settings(task_queue=task_queue), store):
        for e in happy_path(rid, t0):
            await signal_event(client, task_queue, rid, e)
        await signal_event(client, task_queue, rid, delivered(rid, t0 + timedelta(hours=5.1)))
        await signal_event(client, task_queue, rid, acknowledged(rid, t0 + timedelta(hours=5.2)))
        handle = client.get_workflow_handle(workflow_id(rid))
        for _ in range(50):
            s = await handle.query("summary", result_type=LoopSummary)
            if s.stage == "closed":
                break
            await asyncio.sleep(0.1)
        print(s)
        assert s.stage == "closed" and s.outcome == "completed"
        hist = await handle.fetch_history()
        print("history events", len(hist.events))
        await asyncio.sleep(0.5)
        row = store.get_loop(rid)
        assert row is not None and row.stage.value == "closed"
