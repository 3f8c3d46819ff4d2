"""Record workflow histories for the replay test (run deliberately, commit the JSON):

    .venv/bin/python -m tests.histories.record

Histories recorded from today's workflow code must replay on tomorrow's: a change that
breaks this needs `workflow.patched`.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from refloop.config import Settings
from refloop.devserver import find_binary
from refloop.domain import events as ev
from refloop.domain.policy import Policy
from refloop.domain.referral import PatientId
from refloop.gateways.dispatch import signal_event
from refloop.store.db import make_engine
from refloop.store.repo import Store
from refloop.temporal import SEARCH_ATTRIBUTES, workflow_id
from tests.factories import PATIENT, acknowledged, delivered, happy_path
from workers.main import build_worker
from workflows.referral import LoopSummary

HERE = Path(__file__).parent


async def record() -> None:
    env = await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"],
    )
    client, tq = env.client, "record"
    store = Store(make_engine(f"sqlite:///{tempfile.mkdtemp()}/record.db"))
    policy = Policy(amendment_window=timedelta(days=2))
    t0 = datetime(2026, 12, 1, 8, tzinfo=timezone.utc)
    async with build_worker(client, Settings(task_queue=tq), store):
        # 1. happy path with an amendment, closed after the amendment window
        rid = "REC-HAPPY"
        for e in happy_path(rid, t0) + [delivered(rid, t0), acknowledged(rid, t0)]:
            await signal_event(client, tq, rid, e, policy)
        await signal_event(client, tq, rid, ev.ReportRevised(event_id="amend", occurred_at=t0, revision="amended"), policy)
        await signal_event(client, tq, rid, delivered(rid, t0, 2), policy)
        await signal_event(client, tq, rid, acknowledged(rid, t0, 2), policy)
        # 2. identity hold resolved by an operator update, then escalations while stale
        rid2 = "REC-HOLD"
        w = happy_path(rid2, t0)
        for e in w[:2] + [ev.Arrived(event_id="arr", occurred_at=t0, patient=PatientId(value=PATIENT.value, issuer="OTHER"))]:
            await signal_event(client, tq, rid2, e, policy)
        await asyncio.sleep(1)
        await client.get_workflow_handle(workflow_id(rid2)).execute_update(
            "resolve_identity_hold", ev.ResolveIdentityHold(decision="accept", operator="op")
        )
        await client.get_workflow_handle(workflow_id(rid2)).execute_update("close_loop", ev.CloseLoop(reason="recorded"))
        await signal_event(client, tq, rid2, ev.ResultDelivered(event_id="x", occurred_at=t0, what="exception"), policy)
        for r in (rid, rid2):
            handle = client.get_workflow_handle(workflow_id(r), result_type=LoopSummary)
            await handle.result()
            history = await handle.fetch_history()
            (HERE / f"{r.lower()}.json").write_text(history.to_json())
            print(f"recorded {r}: {len(history.events)} events")
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
