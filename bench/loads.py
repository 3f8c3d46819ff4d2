"""The load: a referral loop's full event sequence, order to acknowledgment, with synthetic
identifiers (no PHI) and times around now so no deadline fires during a run."""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta, timezone

from refloop.domain import events as ev
from refloop.domain.referral import Appointment, Identifiers, Patient, PatientId, Requester, ServicePlan


def referral_id(tag: str, n: int) -> str:
    return f"BENCH-{tag}-{n:05d}"


def loop_events(rid: str, now: datetime | None = None) -> list[ev.EventBase]:
    """Ten events that take a loop from order to closure: the product applies every one."""
    now = now or datetime.now(timezone.utc)
    t = lambda minutes: now + timedelta(minutes=minutes)  # noqa: E731
    patient = PatientId(value=f"P-{rid}", issuer="BENCH")
    acc, mpps = f"A-{rid}", f"2.25.{zlib.crc32(rid.encode())}"
    return [
        ev.OrderPlaced(
            event_id=f"{rid}:order",
            occurred_at=t(0),
            source="bench",
            placer_order_number=rid,
            patient=Patient(id=patient),
            requester=Requester(practitioner="bench"),
            service=ServicePlan(procedure_code="CTHEAD", procedure_display="CT head", modality="CT"),
        ),
        ev.Scheduled(
            event_id=f"{rid}:booked",
            occurred_at=t(1),
            source="bench",
            appointment=Appointment(start=t(60), station_aet=["CT1"]),
            identifiers=Identifiers(accession_number=acc, sps_id=f"S-{rid}"),
        ),
        ev.Arrived(event_id=f"{rid}:arrived", occurred_at=t(2), source="bench", patient=patient),
        ev.ProcedureStarted(event_id=f"{rid}:mpps-start", occurred_at=t(3), source="bench", mpps_uid=mpps, procedure_code="CTHEAD"),
        ev.ProcedureCompleted(event_id=f"{rid}:mpps-end", occurred_at=t(4), source="bench", mpps_uid=mpps, series_count=1, instance_count=10),
        ev.StudyArchived(event_id=f"{rid}:archived", occurred_at=t(5), source="bench", accession_number=acc, instance_count=10),
        ev.ReportIssued(event_id=f"{rid}:prelim", occurred_at=t(6), source="bench", status="preliminary", report_id="R1"),
        ev.ReportIssued(event_id=f"{rid}:final", occurred_at=t(7), source="bench", status="final", report_id="R1"),
        ev.ResultDelivered(event_id=f"{rid}:delivered", occurred_at=t(8), source="bench", report_version=1),
        ev.ResultAcknowledged(event_id=f"{rid}:ack", occurred_at=t(9), source="bench"),
    ]
