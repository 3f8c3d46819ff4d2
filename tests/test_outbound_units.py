"""Pure pieces of closing the loop: message builders (checked by re-parsing them with the field's
own libraries), status mapping, the delivery policy, and the machine's small additions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import hl7
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.task import Task
from pydantic import ValidationError

from refloop.domain import events as ev
from refloop.domain import machine
from refloop.domain.loop import Anomaly, Loop, Stage
from refloop.domain.policy import DeliveryRetry, Policy
from refloop.outbound.fhir import diagnostic_report, resource_id, status_task, system_uri
from refloop.outbound.hl7v2 import order_status_message, oru_r01
from refloop.outbound.status import order_status
from tests.factories import T0, happy_path

POLICY = Policy()


def run(events, loop: Loop | None = None) -> machine.Step:
    step = machine.Step(loop or machine.new_loop(events[0].placer_order_number))
    effects = []
    for e in events:
        step = machine.apply(step.loop, e, e.occurred_at, POLICY)
        effects += step.effects
    return machine.Step(step.loop, effects)


def reported(rid: str = "PO-U1", **kw) -> Loop:
    events = happy_path(rid, **kw)
    return run(events).loop


def test_diagnostic_report_round_trips_as_r4b_with_everything_the_requester_needs():
    loop = reported()
    loop.anomalies.append(Anomaly(at=T0, code="procedure_mismatch", detail="modality performed CTCHEST, booked CTHEAD", travels_with_result=True))
    loop.anomalies.append(Anomaly(at=T0, code="internal", detail="not for the requester"))
    loop.report.critical = True
    dr = DiagnosticReport.model_validate_json(diagnostic_report(loop, "result", 1, "Imaging").model_dump_json())
    assert dr.status == "final" and dr.id == "rl-PO-U1"
    assert dr.basedOn[0].identifier.value == "PO-U1" and dr.basedOn[0].identifier.type.coding[0].code == "PLAC"
    assert dr.subject.identifier.value == "PID_1" and dr.subject.identifier.system == "urn:refloop:assigning-authority:ADT1"
    assert dr.imagingStudy[0].identifier.value == f"urn:oid:{loop.referral.identifiers.study_instance_uid}"
    assert dr.conclusionCode[0].coding[0].code == "AA"
    assert "CTCHEST" in dr.conclusion and "not for the requester" not in dr.conclusion
    assert dr.issued and dr.performer[0].display == "Imaging" and dr.code.coding[0].code == "CTHEAD"


def test_amended_report_and_retraction_statuses():
    loop = reported()
    step = machine.apply(loop, ev.ReportRevised(event_id="rev", occurred_at=T0 + timedelta(hours=9), revision="corrected", conclusion="fixed"), T0 + timedelta(hours=9), POLICY)
    assert diagnostic_report(step.loop, "result", 2, "x").status == "corrected"
    step = machine.apply(step.loop, ev.ReportWithdrawn(event_id="wd", occurred_at=T0 + timedelta(hours=10), reason="entered_in_error", note="wrong patient"), T0, POLICY)
    retraction = diagnostic_report(step.loop, "retraction", 2, "x")
    assert retraction.status == "entered-in-error" and "wrong patient" in retraction.conclusion


def test_exception_report_carries_outcome_and_dicom_reason():
    events = happy_path("PO-U2")[:4] + [
        ev.ProcedureDiscontinued(event_id="disc", occurred_at=T0 + timedelta(hours=2.1), mpps_uid=happy_path("PO-U2")[3].mpps_uid, reason_code="110503")
    ]
    loop = run(events).loop
    assert loop.stage == Stage.NOT_PERFORMED
    dr = diagnostic_report(loop, "exception", 0, "x")
    assert dr.status == "cancelled" and "allergic" in dr.conclusion
    assert [c.coding[0].code for c in dr.conclusionCode] == ["not_performed", "110503"]


def test_fhir_ids_are_valid_and_distinct():
    assert resource_id("PO-1") == "rl-PO-1"
    a, b = resource_id("HIS:PO/1"), resource_id("HIS_PO_1")
    assert a != b and all(len(x) <= 64 for x in (a, b))
    assert system_uri("1.2.3.4") == "urn:oid:1.2.3.4" and system_uri("LN") == "http://loinc.org" and system_uri("") is None


def test_status_task_follows_the_stage_of_its_milestone():
    loop = reported()
    task = status_task(loop.referral, {"milestone": "delayed", "detail": "ordered for too long", "stage": "ordered", "at": T0.isoformat()}, "Imaging")
    task = Task.model_validate_json(task.model_dump_json())
    assert (task.status, task.businessStatus.coding[0].code, task.statusReason.text) == ("accepted", "delayed", "ordered for too long")
    assert task.intent == "order" and task.basedOn[0].identifier.value == "PO-U1"


@pytest.mark.parametrize(
    "stage, task, orc5",
    [("ordered", "accepted", "IP"), ("scheduled", "accepted", "SC"), ("in_progress", "in-progress", "IP"), ("reported_preliminary", "in-progress", "A"),
     ("reported_final", "completed", "CM"), ("on_hold", "on-hold", "HD"), ("cancelled", "cancelled", "CA"), ("not_performed", "failed", "DC")],
)
def test_order_status_mapping(stage, task, orc5):
    assert (order_status(stage).task, order_status(stage).orc5) == (task, orc5)


def test_every_stage_has_a_status():
    for stage in Stage:
        order_status(stage)


def test_oru_parses_and_escapes():
    loop = reported()
    loop.report.conclusion = "Lesion 2|3 cm ^ edema & shift ~ noted; Ødème"
    loop.report.critical = True
    text = oru_r01(loop, "result", 1, "Imaging", datetime(2026, 12, 1, tzinfo=timezone.utc))
    msg = hl7.parse(text)
    assert str(msg.segment("MSH")(9)) == "ORU^R01^ORU_R01" and str(msg.segment("MSH")(18)) == "UNICODE UTF-8"
    obx = msg.segments("OBX")[0]
    assert msg.unescape(str(obx(5))) == loop.report.conclusion
    assert str(obx(8)) == "AA" and str(obx(11)) == "F" and str(msg.segment("OBR")(25)) == "F"
    # The same logical message keeps its control ID on a resend; another version does not.
    again = hl7.parse(oru_r01(loop, "result", 1, "Imaging", datetime(2026, 12, 2, tzinfo=timezone.utc)))
    other = hl7.parse(oru_r01(loop, "result", 2, "Imaging", datetime(2026, 12, 2, tzinfo=timezone.utc)))
    assert str(again.segment("MSH")(10)) == str(msg.segment("MSH")(10)) != str(other.segment("MSH")(10))


def test_order_status_message_for_booking():
    loop = reported()
    start = loop.referral.appointment.start
    msg = hl7.parse(order_status_message(loop.referral, {"milestone": "booked", "detail": start.isoformat(), "stage": "scheduled", "at": T0.isoformat()}, 2, "Imaging", T0))
    assert str(msg.segment("ORC")(1)) == "SC" and str(msg.segment("ORC")(5)) == "SC"
    assert str(msg.segment("OBR")(36)) == start.strftime("%Y%m%d%H%M%S+0000")


def test_delivery_policy_validates():
    assert Policy.model_validate({"delivery": {"first_retry": "1s", "max_attempts": 3}}).delivery.max_attempts == 3
    with pytest.raises(ValidationError):
        DeliveryRetry(first_retry=timedelta(minutes=10), max_retry_interval=timedelta(minutes=1))
    with pytest.raises(ValidationError):
        Policy.model_validate({"delivery": {"max_attempts": 0}})


def test_waiting_for_reads_at_a_glance():
    events = happy_path("PO-U3", priority="stat")
    loop = run(events[:1]).loop
    assert machine.waiting_for(loop, POLICY) == "a booking"
    loop = run(events[:2]).loop
    assert machine.waiting_for(loop, POLICY).startswith("the patient's arrival (appointment")
    loop = run(events).loop
    assert machine.waiting_for(loop, POLICY) == "delivery of the result"
    loop = machine.apply(loop, ev.ResultDelivered(event_id="d", occurred_at=T0 + timedelta(hours=6), report_version=1), T0, POLICY).loop
    loop.report.critical = True
    assert machine.waiting_for(loop, POLICY) == "the requester's acknowledgment (critical result)"


def test_reopen_tells_the_requester():
    loop = run(happy_path("PO-U4")[:2]).loop
    loop = machine.apply(loop, ev.DidNotAttend(event_id="dna", occurred_at=T0), T0, POLICY).loop
    step = machine.command(loop, ev.ReopenLoop(reason="patient was there", operator="ana"), T0, POLICY)
    assert [e.milestone for e in step.effects if isinstance(e, machine.NotifyRequester)] == ["reopened"]
