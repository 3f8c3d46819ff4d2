"""Appointment (booking, cancellation, no-show, check-in) and Encounter (arrival) to loop events."""

from __future__ import annotations

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.encounter import Encounter

from refloop.domain import events as ev
from refloop.domain.referral import Appointment as Slot
from refloop.domain.referral import Identifiers, PatientId
from refloop.gateways.http.fhir.refs import KeyCollector, as_utc, parse_literal, patient_of
from refloop.gateways.http.fhir.translation import Context, NotTranslatable, Translation, code_text, last_updated, require_keys

APPOINTMENT_STATUSES = ("booked", "arrived", "checked-in", "cancelled", "noshow")
ARRIVAL_ENCOUNTER_STATUSES = ("arrived", "triaged", "in-progress")


def appointment(a: Appointment, ctx: Context) -> Translation:
    """booked -> scheduled (a later version -> rescheduled); arrived/checked-in -> arrived;
    cancelled -> appointment_cancelled; noshow -> did_not_attend."""
    if a.status not in APPOINTMENT_STATUSES:
        raise NotTranslatable(
            f"Appointment status '{a.status}' is not a loop event: refloop takes {', '.join(APPOINTMENT_STATUSES)}",
            expression=["Appointment.status"],
        )
    keys = KeyCollector(ctx.resolver)
    for ref in a.basedOn or []:
        keys.reference(ref, untyped_means="placer")
    for ident in a.identifier or []:
        keys.identifier(ident)  # only typed ones (FILL, ACSN) tie a booking to its order
    patient = _patient(a)
    # `created` dates the booking itself, never a later status change.
    at = ctx.when(last_updated(a), a.created) if a.status == "booked" else ctx.when(last_updated(a))
    base = dict(event_id=ctx.event_id, occurred_at=at, source=ctx.sender)
    if a.status in ("arrived", "checked-in"):
        if patient is None:
            raise NotTranslatable("Appointment is checked in but names no patient participant", code="required", expression=["Appointment.participant.actor"])
        event: ev.EventBase = ev.Arrived(**base, patient=patient)
        return Translation(event, require_keys(keys.keys(patient, awaiting_arrival=True), "Appointment", ["Appointment.basedOn"]))
    found = require_keys(keys.keys(), "Appointment", ["Appointment.basedOn", "Appointment.identifier"])
    if a.status == "cancelled":
        reason = code_text(a.cancelationReason)[2] or "appointment cancelled"
        return Translation(ev.AppointmentCancelled(**base, reason=reason), found)
    if a.status == "noshow":
        return Translation(ev.DidNotAttend(**base, note=a.comment or "appointment marked no-show"), found)
    if a.start is None:
        raise NotTranslatable("booked Appointment has no start", code="required", expression=["Appointment.start"])
    slot = _slot(a)
    if a.id and ctx.resolver.earlier_versions("Appointment", a.id, ctx.message_key):
        return Translation(ev.Rescheduled(**base, appointment=slot), found)
    ids = Identifiers(filler_order_number=keys.filler, accession_number=keys.accession, study_instance_uid=keys.study_uid)
    return Translation(ev.Scheduled(**base, appointment=slot, identifiers=ids, patient=patient), found)


def _patient(a: Appointment) -> PatientId | None:
    for p in a.participant or []:
        pid = patient_of(p.actor)
        if pid is not None:
            return pid
    return None


def _slot(a: Appointment) -> Slot:
    location, stations = "", []
    for p in a.participant or []:
        lit = parse_literal(p.actor.reference if p.actor else None)
        label = (p.actor.display if p.actor else "") or ""
        if lit and lit.type == "Location" and not location:
            location = label or lit.id
        elif lit and lit.type == "Device":
            stations.append(label or lit.id)
    return Slot(start=as_utc(a.start), location=location, station_name=", ".join(stations))


def encounter(e: Encounter, ctx: Context) -> Translation:
    """arrived / triaged / in-progress -> arrived (the patient is here)."""
    if e.status not in ARRIVAL_ENCOUNTER_STATUSES:
        raise NotTranslatable(
            f"Encounter status '{e.status}' is not an arrival: refloop takes {', '.join(ARRIVAL_ENCOUNTER_STATUSES)}",
            expression=["Encounter.status"],
        )
    patient = patient_of(e.subject)
    if patient is None:
        raise NotTranslatable("Encounter names no patient (subject): an arrival confirms who came", code="required", expression=["Encounter.subject"])
    keys = KeyCollector(ctx.resolver)
    for ref in [*(e.basedOn or []), *(e.appointment or [])]:
        keys.reference(ref, untyped_means="placer")
    for ident in e.identifier or []:
        keys.identifier(ident)
    at = ctx.when(e.period.start if e.period else None, last_updated(e))
    event = ev.Arrived(event_id=ctx.event_id, occurred_at=at, source=ctx.sender, patient=patient)
    return Translation(event, keys.keys(patient, awaiting_arrival=True))
