"""Which FHIR resource types refloop takes, how each is parsed (R4 via fhir.resources.R4B) and
keyed for idempotency, and which translator turns it into a loop event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from refloop.gateways.http.fhir import orders, results, visits
from refloop.gateways.http.handover import content_hash
from refloop.gateways.http.fhir.translation import Context, NotTranslatable, Translation

TRANSLATORS: dict[str, Callable[[Any, Context], Translation]] = {
    "ServiceRequest": orders.service_request,
    "Appointment": visits.appointment,
    "Encounter": visits.encounter,
    "ImagingStudy": results.imaging_study,
    "DiagnosticReport": results.diagnostic_report,
    "Task": orders.task,
}
SUPPORTED = tuple(TRANSLATORS)

WHAT_EACH_MEANS = {
    "ServiceRequest": "active order → order_placed; revoked / entered-in-error → referral_cancelled",
    "Appointment": "booked → scheduled (a later version → rescheduled); arrived / checked-in → arrived; cancelled → appointment_cancelled; noshow → did_not_attend",
    "Encounter": "arrived / triaged / in-progress → arrived",
    "ImagingStudy": "available → study_archived (study UID, accession, instance count)",
    "DiagnosticReport": "preliminary / partial → report_issued preliminary; final → report_issued final; amended / corrected / appended → report_revised; cancelled / entered-in-error → report_withdrawn",
    "Task": "completed, focus or basedOn = the referral or the delivered report → result_acknowledged",
}


def message_key(resource_type: str, data: dict) -> str:
    """Idempotency key: `Type/id/_history/version`, or the content hash when there is no version."""
    rid = data.get("id") if isinstance(data.get("id"), str) else ""
    version = (data.get("meta") or {}).get("versionId") if isinstance(data.get("meta"), dict) else None
    if rid and isinstance(version, str) and version:
        return f"{resource_type}/{rid}/_history/{version}"
    digest = f"sha256-{content_hash(data)}"
    return f"{resource_type}/{rid}/{digest}" if rid else f"{resource_type}/{digest}"


def parse(resource_type: str, data: dict) -> Any:
    """Validate against the R4 model; invalid content becomes a NotTranslatable listing the problems."""
    model = get_fhir_model_class(resource_type)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{resource_type}.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors()[:10])
        raise NotTranslatable(f"not a valid FHIR R4 {resource_type}: {problems}", code="structure") from None


def translate(resource_type: str, data: dict, ctx: Context) -> Translation:
    """Blocking (SQL lookups for references): run it in a thread."""
    return TRANSLATORS[resource_type](parse(resource_type, data), ctx)
