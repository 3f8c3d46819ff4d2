"""Status to the requester along the way: the outbox relay sends each milestone, in order, as a
FHIR Task update or an HL7 ORM^O01 (ORC-1 SC + ORC-5), to a requester endpoint the test runs."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta, timezone

from refloop.config import Settings
from refloop.domain import events as ev
from refloop.domain.loop import Loop
from refloop.gateways.dispatch import signal_event
from refloop.outbound.relay import OutboxRelay
from refloop.outbound.status import order_status
from refloop.store.outbox import OutboxStore
from refloop.temporal import workflow_id
from tests.conftest import unique
from tests.factories import acknowledged, happy_path
from tests.receivers import FhirReceiver, MllpReceiver, eventually
from workers.main import build_worker


@contextlib.asynccontextmanager
async def relay(store, **kw):
    stop = asyncio.Event()
    task = asyncio.create_task(OutboxRelay(store, poll_interval=0.05, first_retry=timedelta(milliseconds=100), **kw).run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def _state(client, rid: str) -> Loop:
    return await client.get_workflow_handle(workflow_id(rid)).query("state", result_type=Loop)


async def _applied(client, rid: str, event_id: str) -> Loop:
    async def check():
        loop = await _state(client, rid)
        return loop if any(t.event_id == event_id for t in loop.timeline) else None

    loop = await eventually(check)
    assert loop is not None, f"{event_id} never applied"
    return loop


def _milestone(task: dict) -> str:
    return task["businessStatus"]["coding"][0]["code"]


async def test_fhir_requester_sees_each_milestone_in_order_matching_the_loop(client, task_queue, store):
    rid = unique()
    now = datetime.now(timezone.utc)
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store), relay(store):
        events = happy_path(rid, now, endpoint=requester.base)
        expected = {  # event -> the milestone it produces (None: no news for the requester)
            "order_placed": "accepted",
            "scheduled": "booked",
            "arrived": "arrived",
            "procedure_started": None,
            "procedure_completed": "performed",
            "study_archived": None,
            "report_issued": "report_available",
        }
        seen = 0
        for e in events:
            await signal_event(client, task_queue, rid, e)
            loop = await _applied(client, rid, e.event_id)
            if expected[e.kind]:
                seen += 1
            await eventually(lambda: len(requester.accepted("Task")) >= seen)
            tasks = requester.accepted("Task")
            assert len(tasks) == seen, f"after {e.kind}: {len(tasks)} updates, expected {seen}"
            last = tasks[-1]
            # What the requester sees is where the loop is now.
            assert last["status"] == order_status(loop.stage).task, (e.kind, loop.stage, last["status"])
            if expected[e.kind]:
                assert _milestone(last) == expected[e.kind]
        tasks = requester.accepted("Task")
        assert [_milestone(t) for t in tasks] == ["accepted", "booked", "arrived", "performed", "report_available", "report_available"]
        assert [t["status"] for t in tasks] == ["accepted", "accepted", "in-progress", "in-progress", "in-progress", "completed"]
        assert tasks[1]["input"][0]["valueString"] == events[1].appointment.start.isoformat()
        assert tasks[4]["businessStatus"]["text"] == "report available: preliminary"
        assert tasks[5]["output"][0]["valueReference"]["reference"].startswith("DiagnosticReport/")
        assert all(t["basedOn"][0]["identifier"]["value"] == rid and t["id"] == tasks[0]["id"] for t in tasks)
        await signal_event(client, task_queue, rid, acknowledged(rid, now + timedelta(hours=6)))
        await eventually(lambda: _stage_is(client, rid, "closed"))
        rows = OutboxStore(store.engine).rows(rid)
        assert [r.status for r in rows] == ["sent"] * 6 and [r.seq for r in rows] == [1, 2, 3, 4, 5, 6]


async def _stage_is(client, rid: str, stage: str) -> bool:
    return (await _state(client, rid)).stage == stage


async def test_failed_update_is_retried_before_later_ones_and_refusal_does_not_block(client, task_queue, store):
    rid = unique()
    now = datetime.now(timezone.utc)
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        requester.script["Task"] = [503, 503]
        for e in happy_path(rid, now, endpoint=requester.base)[:3]:
            await signal_event(client, task_queue, rid, e)
        await eventually(lambda: len(OutboxStore(store.engine).rows(rid)) == 3)
        async with relay(store):
            tasks = await eventually(lambda: len(requester.accepted("Task")) == 3 and requester.accepted("Task"))
        assert [_milestone(t) for t in tasks] == ["accepted", "booked", "arrived"]
        tried = requester.tried("Task")
        assert [(h.status, _milestone(h.body)) for h in tried[:3]] == [(503, "accepted"), (503, "accepted"), (200, "accepted")]
        rows = OutboxStore(store.engine).rows(rid)
        assert [(r.status, r.attempts) for r in rows] == [("sent", 3), ("sent", 1), ("sent", 1)]
        # A refused update (4xx) is marked failed for good; the next milestone still goes out.
        requester.script["Task"] = [400]
        for e in happy_path(rid, now)[3:7]:  # performed ... preliminary report
            await signal_event(client, task_queue, rid, e)
        await eventually(lambda: len(OutboxStore(store.engine).rows(rid)) == 5)
        async with relay(store):
            await eventually(lambda: len(requester.accepted("Task")) == 4)
        rows = OutboxStore(store.engine).rows(rid)
        assert [r.status for r in rows] == ["sent", "sent", "sent", "failed", "sent"]
        assert "HTTP 400" in rows[3].last_error
        assert [(h.status, _milestone(h.body)) for h in requester.tried("Task")][-2:] == [(400, "performed"), (200, "report_available")]


async def test_delay_is_told_with_the_stage_status(temporal_env, client, task_queue, store):
    """Time skipping: no booking within the routine target (14 d) -> 'delayed' while still accepted."""
    rid = unique()
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store), relay(store):
        await signal_event(client, task_queue, rid, happy_path(rid, datetime.now(timezone.utc), endpoint=requester.base)[0])
        await eventually(lambda: len(requester.accepted("Task")) == 1)
        await temporal_env.fast_forward(client.get_workflow_handle(workflow_id(rid)), timedelta(days=14, minutes=1))
        tasks = await eventually(lambda: len(requester.accepted("Task")) == 2 and requester.accepted("Task"))
        assert _milestone(tasks[1]) == "delayed" and tasks[1]["status"] == "accepted"
        assert "waiting for booking" in tasks[1]["statusReason"]["text"]


async def test_hl7_requester_gets_order_status_messages(client, task_queue, store):
    rid, cancelled = unique(), unique()
    now = datetime.now(timezone.utc)
    async with MllpReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store), relay(store):
        events = happy_path(rid, now, endpoint=requester.endpoint)
        events[0].requester.channel = "hl7"
        for e in events:
            await signal_event(client, task_queue, rid, e)
        status = await eventually(lambda: len(requester.of_type("ORM^O01")) == 6 and requester.of_type("ORM^O01"))
        assert all(str(m.segment("ORC")(1)) == "SC" and str(m.segment("ORC")(2)) == rid for m in status)
        assert [str(m.segment("ORC")(5)) for m in status] == ["IP", "SC", "IP", "IP", "A", "CM"]
        assert str(status[1].segment("OBR")(36)).startswith(events[1].appointment.start.strftime("%Y%m%d%H%M"))
        assert str(status[3].segment("NTE")(3)) == "procedure performed: 120 instances"
        # A cancelled order: ORC-5 CA with the reason, and the no-result ORU (OBR-25 X).
        order, booking = happy_path(cancelled, now, endpoint=requester.endpoint)[:2]
        order.requester.channel = "hl7"
        for e in (order, booking, ev.ReferralCancelled(event_id=f"{cancelled}-ca", occurred_at=now, reason="patient", note="patient declined")):
            await signal_event(client, task_queue, cancelled, e)
        await eventually(lambda: any(str(m.segment("ORC")(2)) == cancelled and str(m.segment("ORC")(5)) == "CA" for m in requester.of_type("ORM^O01")))
        last = [m for m in requester.of_type("ORM^O01") if str(m.segment("ORC")(2)) == cancelled][-1]
        assert str(last.segment("ORC")(16)) == "^patient declined"
        oru = await eventually(lambda: [m for m in requester.of_type("ORU^R01") if str(m.segment("ORC")(2)) == cancelled])
        assert str(oru[0].segment("OBR")(25)) == "X" and "patient declined" in str(oru[0].segment("NTE")(3))


async def test_worker_process_runs_the_relay_and_keeps_the_sweep_schedule(client, task_queue, tmp_path):
    """`workers.main.run` (what `refloop worker` and `refloop dev` run): worker + relay + schedule."""
    from workers.main import run
    from workers.schedule import sweep_schedule_id

    rid = unique()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'worker.db'}",
        temporal_address=client.service_client.config.target_host,
        task_queue=task_queue,
        outbox_poll=0.05,
    )
    stop = asyncio.Event()
    async with FhirReceiver() as requester:
        worker = asyncio.create_task(run(settings, stop))
        try:
            await signal_event(client, task_queue, rid, happy_path(rid, datetime.now(timezone.utc), endpoint=requester.base)[0])
            tasks = await eventually(lambda: requester.accepted("Task"))
            assert _milestone(tasks[0]) == "accepted"
            desc = await client.get_schedule_handle(sweep_schedule_id(task_queue)).describe()
            assert desc.schedule.policy.overlap.name == "SKIP"
        finally:
            stop.set()
            await worker
            await client.get_schedule_handle(sweep_schedule_id(task_queue)).delete()
