"""ReferralWorkflow on a real Temporal dev server: every state and exception of DOMAIN.md
§1-2 driven by signals, operator updates with validators, search attributes, history size."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from temporalio.client import WorkflowUpdateFailedError

from refloop.config import Settings
from refloop.domain import events as ev
from refloop.domain.loop import Outcome, Stage
from refloop.domain.referral import PatientId
from refloop.temporal import workflow_id
from tests.conftest import unique
from tests.factories import PATIENT, acknowledged, delivered, happy_path
from tests.helpers import eventually, send, state, wait_for
from workers.main import build_worker


@pytest.fixture
async def worker(client, task_queue, store):
    async with build_worker(client, Settings(task_queue=task_queue), store) as w:
        yield w


def now() -> datetime:
    return datetime.now(timezone.utc)


def exception_delivered(rid: str) -> ev.ResultDelivered:
    return ev.ResultDelivered(event_id=f"{rid}-exc-delivered", occurred_at=now(), what="exception", source="ehr")


async def test_happy_path_closes_with_history_under_budget(client, task_queue, worker, store):
    """Worst case for history: every event in its own workflow task (nothing batched)."""
    rid = unique()
    t0 = now()
    events = happy_path(rid, t0) + [delivered(rid, t0 + timedelta(hours=5.1)), acknowledged(rid, t0 + timedelta(hours=6))]
    for i, e in enumerate(events):
        await send(client, task_queue, rid, e)
        # Watch the SQL read model, not queries: a query landing during the persist local
        # activity costs an extra workflow task, which is not what this test measures.
        assert await eventually(lambda n=i + 1: len(store.timeline(rid)) >= n, interval=0.05)
    loop = await wait_for(client, rid, lambda lp: lp.stage == Stage.CLOSED)
    assert (loop.stage, loop.outcome) == (Stage.CLOSED, Outcome.COMPLETED)
    history = await client.get_workflow_handle(workflow_id(rid)).fetch_history()
    print(f"happy path: {len(events)} events -> {len(history.events)} history events")
    assert len(history.events) < 80
    assert len(store.timeline(rid)) == len(events)


async def test_search_attributes_follow_the_loop(client, task_queue, worker):
    rid = unique()
    order, booking = happy_path(rid, now(), priority="stat")[:2]
    await send(client, task_queue, rid, order, booking)
    await wait_for(client, rid, lambda lp: lp.stage == Stage.SCHEDULED)
    query = f'ReferralId = "{rid}" AND LoopState = "scheduled" AND Priority = "stat" AND Modality = "CT"'

    async def listed():
        return [w async for w in client.list_workflows(query)]

    found = await eventually(listed)
    assert [w.id for w in found] == [workflow_id(rid)]
    sa = found[0].typed_search_attributes
    from refloop import temporal as names

    assert sa.get(names.ACCESSION_NUMBER) == booking.identifiers.accession_number
    assert sa.get(names.STAGE_DEADLINE) == booking.appointment.start + timedelta(minutes=30)
    assert sa.get(names.NEEDS_ATTENTION) is False


SCENARIOS = {
    # name: (events after order+booking, expected stage, expected outcome)
    "no-show reported (SIU^S26)": (lambda rid, w: [ev.DidNotAttend(event_id=f"{rid}-s26", occurred_at=now())], Stage.DID_NOT_ATTEND, Outcome.DID_NOT_ATTEND),
    "MPPS discontinued 110503 (allergy)": (
        lambda rid, w: [w[2], w[3], ev.ProcedureDiscontinued(event_id=f"{rid}-disc", occurred_at=now(), mpps_uid=w[3].mpps_uid, reason_code="110503")],
        Stage.NOT_PERFORMED, Outcome.NOT_PERFORMED),
    "MPPS discontinued 110507 (did not arrive)": (
        lambda rid, w: [w[3], ev.ProcedureDiscontinued(event_id=f"{rid}-disc", occurred_at=now(), mpps_uid=w[3].mpps_uid, reason_code="110507")],
        Stage.DID_NOT_ATTEND, Outcome.DID_NOT_ATTEND),
    "duplicate order (ORC-1 CA)": (lambda rid, w: [ev.ReferralCancelled(event_id=f"{rid}-ca", occurred_at=now(), reason="duplicate", surviving_referral="PO-SURVIVOR")], Stage.CANCELLED, Outcome.DUPLICATE),
    "cancelled before acquisition (SIU^S15)": (lambda rid, w: [ev.AppointmentCancelled(event_id=f"{rid}-s15", occurred_at=now(), reason="patient request")], Stage.CANCELLED, Outcome.CANCELLED),
    "discontinued after start (ORC-1 DC)": (lambda rid, w: [w[2], w[3], ev.UnableToPerform(event_id=f"{rid}-dc", occurred_at=now(), reason_code="110508")], Stage.NOT_PERFORMED, Outcome.NOT_PERFORMED),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_exceptions_are_recorded_then_close_when_delivered(client, task_queue, worker, name):
    make, stage, outcome = SCENARIOS[name]
    rid = unique()
    world = happy_path(rid, now() + timedelta(hours=1))
    await send(client, task_queue, rid, world[0], world[1], *make(rid, world))
    loop = await wait_for(client, rid, lambda lp: lp.stage == stage)
    assert (loop.stage, loop.outcome) == (stage, outcome) and loop.outcome_reason
    assert loop.pending_delivery == "exception"  # the requester must be told; no endpoint yet
    await send(client, task_queue, rid, exception_delivered(rid))
    loop = await wait_for(client, rid, lambda lp: lp.stage == Stage.CLOSED)
    assert (loop.stage, loop.outcome) == (Stage.CLOSED, outcome)


async def test_wrong_worklist_entry_goes_back_and_flags(client, task_queue, worker):
    rid = unique()
    w = happy_path(rid, now() + timedelta(hours=1))
    stop = ev.ProcedureDiscontinued(event_id=f"{rid}-disc", occurred_at=now(), mpps_uid=w[3].mpps_uid, reason_code="110514")
    await send(client, task_queue, rid, *w[:4], stop)
    loop = await wait_for(client, rid, lambda lp: len(lp.timeline) == 5)
    assert loop.stage == Stage.ARRIVED and loop.needs_attention


async def test_amendment_after_closure_redelivers_and_needs_new_ack(client, task_queue, worker):
    rid = unique()
    t0 = now()
    await send(client, task_queue, rid, *happy_path(rid, t0), delivered(rid, t0), acknowledged(rid, t0))
    await wait_for(client, rid, lambda lp: lp.stage == Stage.CLOSED)
    await send(client, task_queue, rid, ev.ReportRevised(event_id=f"{rid}-amend", occurred_at=now(), revision="amended", conclusion="addendum"))
    loop = await wait_for(client, rid, lambda lp: lp.report.version == 2)
    assert loop.stage == Stage.REPORTED_FINAL and loop.pending_delivery == "result"
    await send(client, task_queue, rid, delivered(rid, now(), version=2), acknowledged(rid, now(), version=2))
    loop = await wait_for(client, rid, lambda lp: lp.stage == Stage.CLOSED)
    assert loop.outcome == Outcome.COMPLETED and loop.acknowledged_version == 2


async def test_report_withdrawn_entered_in_error(client, task_queue, worker):
    rid = unique()
    t0 = now()
    await send(client, task_queue, rid, *happy_path(rid, t0), delivered(rid, t0))
    await send(client, task_queue, rid, ev.ReportWithdrawn(event_id=f"{rid}-w", occurred_at=now(), reason="entered_in_error", note="OBX-11 W"))
    loop = await wait_for(client, rid, lambda lp: lp.stage == Stage.ENTERED_IN_ERROR)
    assert loop.pending_delivery == "retraction"
    await send(client, task_queue, rid, ev.ResultDelivered(event_id=f"{rid}-retr", occurred_at=now(), what="retraction", report_version=1))
    loop = await wait_for(client, rid, lambda lp: lp.stage == Stage.CLOSED)
    assert loop.outcome == Outcome.ENTERED_IN_ERROR


async def test_identity_hold_and_validated_operator_updates(client, task_queue, worker):
    rid = unique()
    w = happy_path(rid, now() + timedelta(hours=1))
    other = PatientId(value=PATIENT.value, issuer="ELSEWHERE")
    await send(client, task_queue, rid, w[0], w[1], ev.Arrived(event_id=f"{rid}-arr", occurred_at=now(), patient=other))
    loop = await wait_for(client, rid, lambda lp: lp.stage == Stage.ON_HOLD)
    assert loop.stage == Stage.ON_HOLD and loop.needs_attention
    handle = client.get_workflow_handle(workflow_id(rid))
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await handle.execute_update("reopen_loop", ev.ReopenLoop(reason="nothing to reopen"))
    assert "nothing to reopen" in str(err.value.cause) or "open" in str(err.value.cause)
    summary = await handle.execute_update("resolve_identity_hold", ev.ResolveIdentityHold(decision="accept", operator="op1"))
    assert summary["stage"] == "arrived"
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await handle.execute_update("resolve_identity_hold", ev.ResolveIdentityHold(decision="accept"))
    assert "not on hold" in str(err.value.cause)
    await handle.execute_update("close_loop", ev.CloseLoop(reason="patient withdrew consent", operator="op1"))
    loop = await state(client, rid)
    assert loop.outcome == Outcome.CLOSED_BY_OPERATOR and "patient withdrew consent" in loop.outcome_reason


async def test_merge_then_arrival_under_new_id_matches(client, task_queue, worker):
    rid = unique()
    w = happy_path(rid, now() + timedelta(hours=1))
    new = PatientId(value="MERGED-9", issuer=PATIENT.issuer)
    merge = ev.PatientMerged(event_id=f"{rid}-a40", occurred_at=now(), old=PATIENT, new=new)
    await send(client, task_queue, rid, w[0], w[1], merge, ev.Arrived(event_id=f"{rid}-arr", occurred_at=now(), patient=new))
    loop = await wait_for(client, rid, lambda lp: lp.stage == Stage.ARRIVED)
    assert loop.stage == Stage.ARRIVED and loop.referral.patient.id == new and not loop.needs_attention


async def test_impossible_event_flags_without_failing_the_workflow(client, task_queue, worker):
    rid = unique()
    w = happy_path(rid, now() + timedelta(hours=1))
    cancel = ev.ReferralCancelled(event_id=f"{rid}-ca", occurred_at=now(), reason="requester")
    await send(client, task_queue, rid, w[0], w[1], cancel, w[3])
    loop = await wait_for(client, rid, lambda lp: len(lp.timeline) == 4)
    assert loop.stage == Stage.CANCELLED and loop.anomalies[-1].code == "event_after_closure"
    desc = await client.get_workflow_handle(workflow_id(rid)).describe()
    assert desc.status.name == "RUNNING"
