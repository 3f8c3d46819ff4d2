"""Rules the imaging gateways rely on: correlation on several keys, issuer-less patient IDs."""

from __future__ import annotations

from datetime import datetime, timezone

from refloop.domain import events as ev
from refloop.domain import machine
from refloop.domain.policy import Policy
from refloop.domain.referral import PatientId
from refloop.gateways.intake import Intake, Keys
from tests.imaging import imaging_order

NOW = datetime(2026, 5, 1, 9, 0, tzinfo=timezone.utc)
P1, P2 = PatientId(value="P1", issuer="ADT1"), PatientId(value="P2", issuer="ADT1")


def booked(rid: str, **order):
    loop = machine.new_loop(rid)
    for e in imaging_order(rid, start=NOW, **order):
        loop = machine.apply(loop, e, NOW, Policy()).loop
    return loop


def index(store, *loops) -> None:
    for loop in loops:
        store.persist_loop(loop, timeline_from=0, escalations_from=0, milestones=[], stage_deadline=None, history_length=1)


def test_keys_must_agree_and_the_patient_narrows_a_shared_accession(store):
    a = booked("A", accession="ACC1", sps_id="SPS-A", patient=P1, study_uid="1.2.1")
    b = booked("B", accession="ACC1", sps_id="SPS-B", patient=P2, study_uid="1.2.2")
    c = booked("C", accession="ACC3", patient=P1, study_uid="1.2.3")
    index(store, a, b, c)
    intake = Intake(None, store, "unused")  # type: ignore[arg-type]  (correlation only reads SQL)
    assert intake.correlate(Keys(accession_number="ACC1", sps_id="SPS-A")) == ["A"]
    assert intake.correlate(Keys(accession_number="ACC1", patient=P2)) == ["B"]
    assert intake.correlate(Keys(accession_number="ACC1")) == ["A", "B"]  # ambiguous: an operator decides
    assert intake.correlate(Keys(accession_number="ACC1", patient=PatientId(value="P9"))) == ["A", "B"]
    assert intake.correlate(Keys(accession_number="ACC3", study_instance_uid="9.9.9")) == ["C"]  # made-up UID
    assert intake.correlate(Keys(accession_number="ACC3", study_instance_uid="1.2.1")) == ["A", "C"]  # disagree
    assert intake.correlate(Keys(study_instance_uid="1.2.2")) == ["B"]


def started(patient: PatientId) -> ev.ProcedureStarted:
    return ev.ProcedureStarted(event_id=f"mpps-{patient}", occurred_at=NOW, mpps_uid="1.2.9", patient=patient)


def test_a_modality_without_issuer_is_not_another_patient():
    loop = booked("R", accession="A1", patient=P1)
    same = machine.apply(loop, started(PatientId(value="P1")), NOW, Policy()).loop
    assert not same.anomalies
    for other in (PatientId(value="P1", issuer="OTHER"), PatientId(value="P2")):
        flagged = machine.apply(loop, started(other), NOW, Policy()).loop
        assert [(a.code, a.travels_with_result) for a in flagged.anomalies] == [("patient_mismatch", True)]


def test_a_booking_without_stations_keeps_the_stations_of_the_order():
    from refloop.domain.referral import Appointment

    order, _ = imaging_order("S", accession="A9", start=NOW)
    order.appointment = Appointment(station_aet=["CT1", "CT2"], station_name="CT-ROOM", location="RAD")
    loop = machine.apply(machine.new_loop("S"), order, NOW, Policy()).loop
    booked = ev.Scheduled(event_id="S-book", occurred_at=NOW, appointment=Appointment(start=NOW))
    appt = machine.apply(loop, booked, NOW, Policy()).loop.referral.appointment
    assert (appt.start, appt.station_aet, appt.station_name, appt.location) == (NOW, ["CT1", "CT2"], "CT-ROOM", "RAD")
    elsewhere = ev.Rescheduled(event_id="S-re", occurred_at=NOW, appointment=Appointment(start=NOW, station_aet=["MR1"]))
    moved = machine.apply(machine.apply(loop, booked, NOW, Policy()).loop, elsewhere, NOW, Policy()).loop.referral.appointment
    assert (moved.station_aet, moved.station_name) == (["MR1"], "CT-ROOM")
