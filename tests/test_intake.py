"""The shared gateway intake against a real Temporal server and a real SQL store."""

import asyncio
from datetime import datetime, timezone

from refloop.config import Settings
from refloop.domain import events as ev
from refloop.domain.loop import Loop
from refloop.gateways.intake import Inbound, Intake, Keys, Status
from refloop.temporal import workflow_id
from tests.conftest import unique
from tests.factories import happy_path
from workers.main import build_worker


async def wait_for(handle, predicate, timeout=10.0) -> Loop:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        loop = await handle.query("state", result_type=Loop)
        if predicate(loop) or asyncio.get_running_loop().time() > deadline:
            return loop
        await asyncio.sleep(0.1)


async def test_study_before_order_is_parked_then_released(client, task_queue, store):
    rid = unique()
    intake = Intake(client, store, task_queue)
    order, booking = happy_path(rid, datetime.now(timezone.utc))[:2]
    acc = booking.identifiers.accession_number
    study = ev.StudyArchived(event_id=f"{rid}-study", occurred_at=datetime.now(timezone.utc), accession_number=acc, instance_count=3)
    async with build_worker(client, Settings(task_queue=task_queue), store):
        r = await intake.receive(Inbound("orthanc", "pacs", f"{rid}-s", "StableStudy", "{}", study, Keys(accession_number=acc)))
        assert r.status == Status.PARKED and r.positive
        assert (await intake.receive(Inbound("json", "ris", f"{rid}-o", "order", "{}", order, Keys(placer_order_number=rid)))).status == Status.ACCEPTED
        assert (await intake.receive(Inbound("json", "ris", f"{rid}-b", "booking", "{}", booking, Keys(placer_order_number=rid)))).status == Status.ACCEPTED
        handle = client.get_workflow_handle(workflow_id(rid))
        loop = await wait_for(handle, lambda lp: lp.archived_instances == 3)
        assert loop.archived_instances == 3
        assert any(t.kind == "study_archived" and t.applied for t in loop.timeline)
        # The same message again: one transition, positive answer again.
        again = await intake.receive(Inbound("orthanc", "pacs", f"{rid}-s", "StableStudy", "{}", study, Keys(accession_number=acc)))
        assert again.status == Status.DUPLICATE and again.positive


async def test_two_loops_claiming_a_message_is_ambiguous(client, task_queue, store):
    a, b = unique(), unique()
    intake = Intake(client, store, task_queue)
    now = datetime.now(timezone.utc)
    async with build_worker(client, Settings(task_queue=task_queue), store):
        for rid in (a, b):
            order, booking = happy_path(rid, now)[:2]
            booking.identifiers.filler_order_number = "SHARED-FILLER"
            await intake.receive(Inbound("json", "ris", f"{rid}-o", "order", "{}", order, Keys(placer_order_number=rid)))
            await intake.receive(Inbound("json", "ris", f"{rid}-b", "booking", "{}", booking, Keys(placer_order_number=rid)))
        for _ in range(50):
            if len(store.find_referrals("filler", "SHARED-FILLER")) == 2:
                break
            await asyncio.sleep(0.1)
        report = ev.ReportIssued(event_id=f"{a}-rep", occurred_at=now, status="final")
        r = await intake.receive(Inbound("hl7", "ris", f"{a}-rep", "ORU^R01", "MSH|...", report, Keys(filler_order_number="SHARED-FILLER")))
        assert r.status == Status.AMBIGUOUS and a in r.detail and b in r.detail


async def test_event_after_the_loop_completed_is_kept_as_late_not_a_new_loop(client, task_queue, store):
    from datetime import timedelta

    from refloop.domain.policy import Policy
    from tests.factories import acknowledged, delivered
    from workflows.referral import LoopSummary

    rid = unique()
    now = datetime.now(timezone.utc)
    intake = Intake(client, store, task_queue, Policy(amendment_window=timedelta(seconds=1)))
    async with build_worker(client, Settings(task_queue=task_queue), store):
        for i, e in enumerate(happy_path(rid, now) + [delivered(rid, now), acknowledged(rid, now)]):
            await intake.receive(Inbound("json", "ris", f"{rid}-{i}", e.kind, "{}", e, Keys(placer_order_number=rid)))
        summary = await client.get_workflow_handle(workflow_id(rid), result_type=LoopSummary).result()
        assert summary.outcome == "completed"
        late = ev.ReportRevised(event_id=f"{rid}-late", occurred_at=now, revision="amended")
        r = await intake.receive(Inbound("json", "ris", f"{rid}-late", "report_revised", "{}", late, Keys(placer_order_number=rid)))
        assert r.status == Status.LATE and r.positive and r.referral_id == rid
        assert [row.event_id for row in intake.inbox.list(status="late")] == [late.event_id]
        runs = [w async for w in client.list_workflows(f'WorkflowId = "{workflow_id(rid)}"')]
        assert len(runs) == 1  # no second loop was started


async def test_arrival_before_booking_is_persisted_is_released_by_patient(client, task_queue, store):
    rid = unique()
    intake = Intake(client, store, task_queue)
    order, booking, arrival = happy_path(rid, datetime.now(timezone.utc))[:3]
    patient_only = Keys(patient=arrival.patient, match_patient_awaiting_arrival=True)
    async with build_worker(client, Settings(task_queue=task_queue), store):
        r = await intake.receive(Inbound("hl7", "adt", f"{rid}-a04", "ADT^A04", "MSH|...", arrival, patient_only))
        assert r.status == Status.PARKED
        for i, e in enumerate((order, booking)):
            await intake.receive(Inbound("json", "ris", f"{rid}-{i}", e.kind, "{}", e, Keys(placer_order_number=rid)))
        loop = await wait_for(client.get_workflow_handle(workflow_id(rid)), lambda lp: lp.stage == "arrived")
        assert loop.stage == "arrived"


async def test_placer_named_without_its_system_finds_the_qualified_referral(client, task_queue, store):
    number = unique("X")
    intake = Intake(client, store, task_queue)
    order, booking = happy_path(number, datetime.now(timezone.utc))[:2]
    qualified = Keys(placer_order_number=number, placer_system="GHHPlacer")
    async with build_worker(client, Settings(task_queue=task_queue), store):
        r = await intake.receive(Inbound("hl7", "ris", f"{number}-o", "OMI^O23", "MSH|", order, qualified))
        assert r.referral_id == f"GHHPlacer:{number}"
        await wait_for(client.get_workflow_handle(workflow_id(r.referral_id)), lambda lp: lp.stage == "ordered")
        assert await _eventually(lambda: store.resolve(number) == f"GHHPlacer:{number}")
        r2 = await intake.receive(Inbound("fhir", "ehr", f"{number}-b", "Appointment", "{}", booking, Keys(placer_order_number=number)))
        assert r2.status == Status.ACCEPTED and r2.referral_id == f"GHHPlacer:{number}"
        runs = [w async for w in client.list_workflows(f'WorkflowId = "{workflow_id(number)}"')]
        assert runs == []  # no stray loop under the bare number


async def _eventually(check, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True
