"""Build the events of a referral's loop for tests (times relative to `t0`)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from refloop.domain import events as ev
from refloop.domain.referral import Appointment, Identifiers, Patient, PatientId, Requester, ServicePlan

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
PATIENT = PatientId(value="PID_1", issuer="ADT1")


def order(rid: str, t0: datetime = T0, *, priority: str = "routine", endpoint: str = "", patient: PatientId = PATIENT, code: str = "CTHEAD") -> ev.OrderPlaced:
    return ev.OrderPlaced(
        event_id=f"{rid}-order",
        occurred_at=t0,
        source="ris",
        placer_order_number=rid,
        patient=Patient(id=patient, name="Smith^Lucy", birth_date="20141014", sex="F"),
        requester=Requester(practitioner="Dr Who", endpoint=endpoint),
        service=ServicePlan(procedure_code=code, procedure_display="CT head", modality="CT", priority=priority),  # type: ignore[arg-type]
    )


def happy_path(rid: str, t0: datetime = T0, **order_kw) -> list[ev.EventBase]:
    """Order through final report: everything the world reports before we deliver."""
    h = lambda x: t0 + timedelta(hours=x)  # noqa: E731
    acc = f"ACC-{rid}"
    return [
        order(rid, t0, **order_kw),
        ev.Scheduled(event_id=f"{rid}-book", occurred_at=h(0.1), appointment=Appointment(start=h(2), station_aet=["CT1"]), identifiers=Identifiers(accession_number=acc, sps_id=f"SPS-{rid}", study_instance_uid=f"1.2.826.0.1.{abs(hash(rid)) % 10**8}")),
        ev.Arrived(event_id=f"{rid}-arrive", occurred_at=h(1.9), patient=order_kw.get("patient", PATIENT)),
        ev.ProcedureStarted(event_id=f"{rid}-mpps1", occurred_at=h(2.0), mpps_uid=f"9.{abs(hash(rid)) % 10**8}", procedure_code=order_kw.get("code", "CTHEAD")),
        ev.ProcedureCompleted(event_id=f"{rid}-mpps2", occurred_at=h(2.3), mpps_uid=f"9.{abs(hash(rid)) % 10**8}", series_count=2, instance_count=120),
        ev.StudyArchived(event_id=f"{rid}-archived", occurred_at=h(2.5), accession_number=acc, instance_count=120),
        ev.ReportIssued(event_id=f"{rid}-prelim", occurred_at=h(4), status="preliminary", report_id="R1", conclusion="draft"),
        ev.ReportIssued(event_id=f"{rid}-final", occurred_at=h(5), status="final", report_id="R1", conclusion="No acute findings."),
    ]


def delivered(rid: str, t: datetime, version: int = 1) -> ev.ResultDelivered:
    return ev.ResultDelivered(event_id=f"{rid}-delivered-{version}", occurred_at=t, report_version=version, source="ehr")


def acknowledged(rid: str, t: datetime, version: int | None = None) -> ev.ResultAcknowledged:
    return ev.ResultAcknowledged(event_id=f"{rid}-ack-{version}", occurred_at=t, report_version=version, by="Dr Who")
