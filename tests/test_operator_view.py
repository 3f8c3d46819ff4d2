"""What an operator sees in the Temporal UI for one loop: the current-details markdown and the
summaries on activities and timers (read from the real server)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from temporalio.api.sdk.v1 import WorkflowMetadata

from refloop.config import Settings
from refloop.domain import events as ev
from refloop.domain.loop import Loop
from refloop.domain.referral import PatientId
from refloop.gateways.dispatch import signal_event
from refloop.temporal import workflow_id
from tests.conftest import unique
from tests.factories import happy_path
from tests.receivers import FhirReceiver, eventually
from workers.main import build_worker


async def _details(handle) -> str:
    meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return meta.current_details


async def test_current_details_and_summaries(client, task_queue, store):
    rid = unique()
    now = datetime.now(timezone.utc)
    handle = client.get_workflow_handle(workflow_id(rid))
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        order, booking = happy_path(rid, now, endpoint=requester.base)[:2]
        for e in (order, booking, ev.Arrived(event_id=f"{rid}-a", occurred_at=now, patient=PatientId(value="X9", issuer="ELSEWHERE"))):
            await signal_event(client, task_queue, rid, e)
        details = await eventually(lambda: _has(handle, "on hold"))
        assert details.startswith("### on hold")
        assert "- **Waiting for:** an operator's identity decision" in details
        assert "- **Since:**" in details and "- **Deadline:**" in details and "(remind)" in details
        assert "**Last events**" in details and "arrived" in details
        await handle.execute_update("resolve_identity_hold", ev.ResolveIdentityHold(decision="accept", operator="ana"), result_type=None)
        for e in happy_path(rid, now)[3:]:
            await signal_event(client, task_queue, rid, e)
        await eventually(lambda: _has(handle, "delivered v1"))
        e = ev.ReportRevised(event_id=f"{rid}-rev", occurred_at=now, revision="amended", conclusion="changed", critical=True)
        await signal_event(client, task_queue, rid, e)
        details = await eventually(lambda: _has(handle, "v2 amended **CRITICAL**; delivered v2"))
        assert "- **Waiting for:** the requester's acknowledgment (critical result)" in details
        history = await handle.fetch_history()
        summaries = [
            client.data_converter.payload_converter.from_payload(e.user_metadata.summary, str)
            for e in history.events
            if e.HasField("user_metadata") and e.user_metadata.HasField("summary")
        ]
        assert "deliver result v1 to the requester" in summaries
        assert "deliver result v2 to the requester (CRITICAL)" in summaries
        assert any(re.fullmatch(r"[a-z_]+: (level \d|no-show)", s) for s in summaries)  # the deadline timer
        loop = await handle.query("state", result_type=Loop)
        assert loop.stage == "delivered"


async def _has(handle, text: str) -> str | None:
    details = await _details(handle)
    return details if text in details else None
