"""ServiceRequest (the order) and Task (the requester's acknowledgment) to loop events."""

from __future__ import annotations

from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

from refloop.domain import events as ev
from refloop.domain.referral import Identifiers, Patient, Priority, Requester, ServicePlan
from refloop.gateways.http.fhir.refs import KeyCollector, parse_literal, patient_of
from refloop.gateways.http.fhir.translation import (
    Context,
    NotTranslatable,
    Translation,
    code_text,
    last_updated,
    reference_label,
    require_keys,
)

ORDER_INTENTS = {"order", "original-order", "reflex-order", "filler-order", "instance-order"}
_PRIORITY = {"routine": Priority.ROUTINE, "urgent": Priority.URGENT, "asap": Priority.URGENT, "stat": Priority.STAT}
DICOM_CODES = "http://dicom.nema.org/resources/ontology/DCM"


def service_request(sr: ServiceRequest, ctx: Context) -> Translation:
    """active order -> order_placed; revoked or entered-in-error -> referral_cancelled."""
    keys = KeyCollector(ctx.resolver)
    for ident in sr.identifier or []:
        keys.identifier(ident, untyped_means="placer")
    if not keys.placer and sr.id:
        keys.placer = sr.id  # no business identifier: the logical id is the placer's order number
    if not keys.placer:
        raise NotTranslatable("ServiceRequest has neither an identifier nor an id: no placer order number", code="required", expression=["ServiceRequest.identifier"])
    at = ctx.when(sr.authoredOn, last_updated(sr))
    if sr.status in ("revoked", "entered-in-error"):
        note = "; ".join(n.text for n in sr.note or [] if n.text)
        event: ev.EventBase = ev.ReferralCancelled(
            event_id=ctx.event_id,
            occurred_at=at,
            source=ctx.sender,
            reason="requester" if sr.status == "revoked" else "other",
            note=note or ("order revoked by the requester" if sr.status == "revoked" else "order entered in error"),
        )
        return Translation(event, keys.keys())
    if sr.status != "active":
        raise NotTranslatable(
            f"ServiceRequest status '{sr.status}' is not an order to fulfil: refloop takes 'active' orders "
            "(and 'revoked' or 'entered-in-error' to cancel one)",
            expression=["ServiceRequest.status"],
        )
    if sr.intent not in ORDER_INTENTS:
        raise NotTranslatable(
            f"ServiceRequest intent '{sr.intent}' is not an order (expected one of {', '.join(sorted(ORDER_INTENTS))})",
            expression=["ServiceRequest.intent"],
        )
    patient = patient_of(sr.subject)
    event = ev.OrderPlaced(
        event_id=ctx.event_id,
        occurred_at=at,
        source=ctx.sender,
        placer_order_number=keys.placer,
        patient=Patient(id=patient) if patient else None,
        requester=Requester(practitioner=reference_label(sr.requester)),
        service=_service_plan(sr),
        identifiers=Identifiers(filler_order_number=keys.filler, accession_number=keys.accession, study_instance_uid=keys.study_uid),
    )
    return Translation(event, keys.keys())


def _service_plan(sr: ServiceRequest) -> ServicePlan:
    code, system, display = code_text(sr.code)
    modality = ""
    for concept in [*(sr.category or []), *(sr.orderDetail or []), *([sr.code] if sr.code else [])]:
        for coding in concept.coding or []:
            if coding.system == DICOM_CODES and coding.code and not modality:
                modality = coding.code
    body_site = code_text((sr.bodySite or [None])[0])[2]
    return ServicePlan(
        procedure_code=code,
        procedure_system=system,
        procedure_display=display,
        modality=modality,
        body_site=body_site,
        priority=_PRIORITY.get(sr.priority or "routine", Priority.ROUTINE),
    )


def task(t: Task, ctx: Context) -> Translation:
    """A completed Task whose focus or basedOn is the referral (or the delivered report) acknowledges the result."""
    if t.status != "completed":
        raise NotTranslatable(
            f"Task status '{t.status}' does not acknowledge a result: the requester acknowledges with a "
            "Task whose status is 'completed' and whose focus or basedOn names the referral or the delivered report",
            expression=["Task.status"],
        )
    keys = KeyCollector(ctx.resolver)
    keys.reference(t.focus, untyped_means="placer")
    for ref in t.basedOn or []:
        keys.reference(ref, untyped_means="placer")
    version = None
    focus = parse_literal(t.focus.reference if t.focus else None)
    if focus and focus.type == "DiagnosticReport" and focus.version.isdigit():
        version = int(focus.version)
    event = ev.ResultAcknowledged(
        event_id=ctx.event_id,
        occurred_at=ctx.when(t.lastModified, last_updated(t), t.authoredOn),
        source=ctx.sender,
        report_version=version,
        by=reference_label(t.owner) or reference_label(t.requester) or ctx.sender,
    )
    return Translation(event, require_keys(keys.keys(), "Task", ["Task.focus", "Task.basedOn"]))
