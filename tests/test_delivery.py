"""Result delivery to a real requester endpoint started by the test (FHIR over HTTP, HL7 over
MLLP), with injected failures, against the real Temporal dev server and a real SQL store.

Acknowledgments are sent as `result_acknowledged` events through `signal_event` (the HTTP
acknowledgment endpoint is another module's work); everything else is the real path.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from refloop.config import Settings
from refloop.domain import events as ev
from refloop.domain.loop import Loop
from refloop.domain.policy import DeliveryRetry, Policy
from refloop.gateways.dispatch import signal_event
from refloop.store.outbox import DeliveryLog
from refloop.temporal import workflow_id
from tests.conftest import unique
from tests.factories import acknowledged, happy_path
from tests.receivers import HANG, FhirReceiver, MllpReceiver, eventually
from workers.main import build_worker
from workflows.referral import LoopSummary

FAST = Policy(delivery=DeliveryRetry(first_retry=timedelta(milliseconds=200), max_retry_interval=timedelta(seconds=1), attempt_timeout=timedelta(seconds=2), max_attempts=5))


async def _state(client, rid: str) -> Loop:
    return await client.get_workflow_handle(workflow_id(rid)).query("state", result_type=Loop)


async def _until(client, rid: str, predicate, timeout: float = 30.0) -> Loop:
    async def check():
        loop = await _state(client, rid)
        return loop if predicate(loop) else None

    loop = await eventually(check, timeout=timeout, interval=0.1)
    assert loop is not None, f"{rid}: condition not reached; now {(await _state(client, rid)).stage}"
    return loop


async def _run_loop(client, task_queue: str, rid: str, endpoint: str, policy: Policy = FAST, channel: str = "fhir", **kw) -> None:
    events = happy_path(rid, datetime.now(timezone.utc), endpoint=endpoint, **kw)
    events[0].requester.channel = channel
    for e in events:
        await signal_event(client, task_queue, rid, e, policy)


async def test_500s_then_success_records_every_attempt_and_closes_on_ack(client, task_queue, store):
    rid = unique()
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        requester.script["DiagnosticReport"] = [500, 503]
        await _run_loop(client, task_queue, rid, requester.base)
        loop = await _until(client, rid, lambda lp: lp.stage == "delivered")
        tries = requester.tried("DiagnosticReport")
        assert [t.status for t in tries] == [500, 503, 200]
        report = requester.accepted("DiagnosticReport")[0]
        assert report["status"] == "final" and report["conclusion"] == "No acute findings."
        assert report["basedOn"][0]["identifier"]["value"] == rid
        assert report["subject"]["identifier"]["value"] == "PID_1"
        assert report["subject"]["identifier"]["system"].endswith("ADT1")
        uid = loop.referral.identifiers.study_instance_uid
        assert report["imagingStudy"][0]["identifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}
        assert report["performer"][0]["display"] and report["issued"]
        attempts = DeliveryLog(store.engine).attempts(rid)
        assert [(a.attempt, a.ok, a.status_code) for a in attempts] == [(1, False, 500), (2, False, 503), (3, True, 200)]
        assert all(a.what == "result" and a.version == 1 for a in attempts)
        # Delivered is not closed: the loop waits for the requester's acknowledgment.
        assert loop.stage == "delivered" and loop.delivered_version == 1
        await signal_event(client, task_queue, rid, acknowledged(rid, datetime.now(timezone.utc), 1))
        loop = await _until(client, rid, lambda lp: lp.stage == "closed")
        assert loop.outcome == "completed"


async def test_4xx_is_not_retried_and_escalates_then_operator_redelivers(client, task_queue, store):
    rid = unique()
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        requester.script["DiagnosticReport"] = [422]
        await _run_loop(client, task_queue, rid, requester.base)
        loop = await _until(client, rid, lambda lp: any(a.code == "delivery_failed" for a in lp.anomalies))
        assert len(requester.tried("DiagnosticReport")) == 1  # refused: no retry
        assert loop.stage == "reported_final" and loop.needs_attention
        failed = next(a for a in loop.anomalies if a.code == "delivery_failed")
        assert "HTTP 422" in failed.detail and "scripted 422" in failed.detail
        assert [(e.level, e.stage) for e in loop.escalations] == [(2, "reported_final")]
        assert [(a.ok, a.status_code) for a in DeliveryLog(store.engine).attempts(rid)] == [(False, 422)]
        await eventually(lambda: store.escalations(rid) and store.escalations(rid)[0].notified)
        # The requester fixed its side; an operator re-delivers through the validated update.
        handle = client.get_workflow_handle(workflow_id(rid))
        await handle.execute_update("redeliver", ev.Redeliver(reason="requester fixed its endpoint", operator="ops"), result_type=LoopSummary)
        loop = await _until(client, rid, lambda lp: lp.stage == "delivered")
        assert [t.status for t in requester.tried("DiagnosticReport")] == [422, 200]
        await signal_event(client, task_queue, rid, acknowledged(rid, datetime.now(timezone.utc)))
        await _until(client, rid, lambda lp: lp.stage == "closed" and lp.outcome == "completed")


async def test_hanging_endpoint_times_out_and_is_retried(client, task_queue, store):
    rid = unique()
    policy = Policy(delivery=DeliveryRetry(first_retry=timedelta(milliseconds=100), attempt_timeout=timedelta(seconds=1), max_attempts=5))
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        requester.script["DiagnosticReport"] = [HANG, HANG]
        await _run_loop(client, task_queue, rid, requester.base, policy)
        await _until(client, rid, lambda lp: lp.stage == "delivered")
        attempts = DeliveryLog(store.engine).attempts(rid)
        assert [a.ok for a in attempts] == [False, False, True]
        assert all("no answer" in a.error for a in attempts[:2])
        assert [t.status for t in requester.tried("DiagnosticReport")] == [HANG, HANG, 200]


async def test_retries_exhausted_escalate(client, task_queue, store):
    rid = unique()
    policy = Policy(delivery=DeliveryRetry(first_retry=timedelta(milliseconds=100), max_retry_interval=timedelta(milliseconds=200), max_attempts=3))
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        requester.script["DiagnosticReport"] = [500] * 5
        await _run_loop(client, task_queue, rid, requester.base, policy)
        loop = await _until(client, rid, lambda lp: any(a.code == "delivery_failed" for a in lp.anomalies))
        assert len(DeliveryLog(store.engine).attempts(rid)) == 3
        assert loop.escalations[-1].level == 2 and "HTTP 500" in loop.escalations[-1].reason


async def test_amendment_after_closure_is_redelivered_and_needs_a_new_ack(client, task_queue, store):
    rid = unique()
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        await _run_loop(client, task_queue, rid, requester.base)
        await _until(client, rid, lambda lp: lp.stage == "delivered")
        await signal_event(client, task_queue, rid, acknowledged(rid, datetime.now(timezone.utc), 1))
        await _until(client, rid, lambda lp: lp.stage == "closed")
        now = datetime.now(timezone.utc)
        await signal_event(
            client, task_queue, rid,
            ev.ReportRevised(event_id=f"{rid}-amend", occurred_at=now, revision="amended", report_id="R1", conclusion="Small subdural haematoma."),
        )
        loop = await _until(client, rid, lambda lp: lp.stage == "delivered" and lp.delivered_version == 2)
        assert loop.outcome is None and loop.acknowledged_version == 1
        reports = requester.accepted("DiagnosticReport")
        assert [r["status"] for r in reports] == ["final", "amended"]
        assert reports[1]["conclusion"] == "Small subdural haematoma."
        assert reports[1]["id"] == reports[0]["id"]  # the same resource, updated
        assert reports[1]["extension"][0]["valueInteger"] == 2
        # An acknowledgment of the old version does not close it; of the new one does.
        await signal_event(client, task_queue, rid, ev.ResultAcknowledged(event_id=f"{rid}-late-ack-1", occurred_at=now, report_version=1))
        loop = await _until(client, rid, lambda lp: any(t.event_id == f"{rid}-late-ack-1" for t in lp.timeline))
        assert loop.stage == "delivered"
        await signal_event(client, task_queue, rid, acknowledged(rid, now + timedelta(minutes=5), 2))
        loop = await _until(client, rid, lambda lp: lp.stage == "closed")
        assert loop.outcome == "completed" and loop.acknowledged_version == 2
        assert [a.version for a in DeliveryLog(store.engine).attempts(rid) if a.ok] == [1, 2]


async def test_withdrawn_report_is_retracted(client, task_queue, store):
    rid = unique()
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        await _run_loop(client, task_queue, rid, requester.base)
        await _until(client, rid, lambda lp: lp.stage == "delivered")
        await signal_event(
            client, task_queue, rid,
            ev.ReportWithdrawn(event_id=f"{rid}-wd", occurred_at=datetime.now(timezone.utc), reason="entered_in_error", note="wrong patient"),
        )
        loop = await _until(client, rid, lambda lp: lp.stage == "closed")
        assert loop.outcome == "entered_in_error"
        last = requester.accepted("DiagnosticReport")[-1]
        assert last["status"] == "entered-in-error" and "wrong patient" in last["conclusion"]


@pytest.mark.parametrize(
    "event_kind, expected_status, expected_text",
    [
        ("referral_cancelled", "cancelled", "clinician changed plan"),
        ("unable_to_perform", "cancelled", "Patient allergic to media/contrast"),
        ("did_not_attend", "cancelled", "patient did not attend"),
    ],
)
async def test_exception_closure_is_delivered_with_its_reason(client, task_queue, store, event_kind, expected_status, expected_text):
    rid = unique()
    now = datetime.now(timezone.utc)
    events = happy_path(rid, now, endpoint="")[:2]
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        events[0].requester.endpoint = requester.base
        for e in events:
            await signal_event(client, task_queue, rid, e, FAST)
        exception = {
            "referral_cancelled": ev.ReferralCancelled(event_id=f"{rid}-x", occurred_at=now, reason="clinical", note="clinician changed plan"),
            "unable_to_perform": ev.UnableToPerform(event_id=f"{rid}-x", occurred_at=now, reason_code="110503"),
            "did_not_attend": ev.DidNotAttend(event_id=f"{rid}-x", occurred_at=now),
        }[event_kind]
        await signal_event(client, task_queue, rid, exception)
        loop = await _until(client, rid, lambda lp: lp.stage == "closed")
        report = requester.accepted("DiagnosticReport")[-1]
        assert report["status"] == expected_status
        assert expected_text.lower() in report["conclusion"].lower()
        assert report["conclusionCode"][0]["coding"][0]["code"] == loop.outcome.value
        if event_kind == "unable_to_perform":
            assert loop.outcome == "not_performed"


async def test_critical_result_tightens_acknowledgment_deadline(temporal_env, client, task_queue, store):
    """Time skipping: a critical result not acknowledged within policy.critical_acknowledgment (1 h)
    escalates; a routine one does not escalate in that hour (its deadline is 72 h)."""
    critical, routine = unique(), unique()
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        for rid, is_critical in ((critical, True), (routine, False)):
            events = happy_path(rid, datetime.now(timezone.utc), endpoint=requester.base)
            events[-1].critical = is_critical
            for e in events:
                await signal_event(client, task_queue, rid, e, FAST)
        for rid in (critical, routine):
            await _until(client, rid, lambda lp: lp.stage == "delivered")
        crit_dr = next(r for r in requester.accepted("DiagnosticReport") if r["basedOn"][0]["identifier"]["value"] == critical)
        assert crit_dr["conclusionCode"][0]["coding"][0]["code"] == "AA"
        assert crit_dr["conclusion"].startswith("CRITICAL RESULT")
        for rid in (critical, routine):
            await temporal_env.fast_forward(client.get_workflow_handle(workflow_id(rid)), timedelta(minutes=61))
        loop = await _until(client, critical, lambda lp: lp.escalations)
        first = loop.escalations[0]
        assert (first.level, first.stage) == (1, "delivered") and "acknowledgment" in first.reason
        delivered_at = loop.milestones["delivered"]
        assert timedelta(minutes=59) <= first.at - delivered_at <= timedelta(minutes=61)
        assert not (await _state(client, routine)).escalations


async def test_hl7_requester_gets_oru_and_refusal_escalates(client, task_queue, store):
    rid, refused = unique(), unique()
    async with MllpReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        events = happy_path(rid, datetime.now(timezone.utc), endpoint=requester.endpoint)
        events[0].requester.channel = "hl7"
        events[-1].critical = True
        for e in events:
            await signal_event(client, task_queue, rid, e, FAST)
        await _until(client, rid, lambda lp: lp.stage == "delivered")
        oru = requester.of_type("ORU^R01")[0]
        assert str(oru.segment("OBR")(25)) == "F"
        assert str(oru.segment("ORC")(2)) == rid
        assert str(oru.segment("PID")(3)) == "PID_1^^^ADT1"
        obx = oru.segments("OBX")
        assert str(obx[0](5)) == "No acute findings." and str(obx[0](8)) == "AA"
        assert str(obx[1](3)).startswith("113014") and str(obx[1](5))
        # AE: the requester refused the content -> not retried, escalated.
        requester.script = ["AE"]
        await _run_loop(client, task_queue, refused, requester.endpoint, channel="hl7")
        loop = await _until(client, refused, lambda lp: any(a.code == "delivery_failed" for a in lp.anomalies))
        assert "HL7 AE" in loop.anomalies[-1].detail
        assert [(a.ok, a.channel) for a in DeliveryLog(store.engine).attempts(refused)] == [(False, "hl7")]


async def test_a_quick_amendment_never_sends_stale_or_mislabelled_versions(client, task_queue, store):
    rid = unique()
    now = datetime.now(timezone.utc)
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        requester.script["DiagnosticReport"] = [503]  # v1's first try fails: v2 arrives meanwhile
        await _run_loop(client, task_queue, rid, requester.base)
        await signal_event(
            client, task_queue, rid,
            ev.ReportRevised(event_id=f"{rid}-amend", occurred_at=now, revision="amended", conclusion="Amended text."),
        )
        await _until(client, rid, lambda lp: lp.stage == "delivered" and lp.delivered_version == 2)
        reports = requester.accepted("DiagnosticReport")
        assert reports[-1]["status"] == "amended" and reports[-1]["extension"][0]["valueInteger"] == 2
        for r in reports:  # whatever went out says what it is
            version = r["extension"][0]["valueInteger"]
            assert (r["status"], r["conclusion"]) == (("final", "No acute findings.") if version == 1 else ("amended", "Amended text."))
        assert [r["extension"][0]["valueInteger"] for r in reports] == sorted(r["extension"][0]["valueInteger"] for r in reports)
