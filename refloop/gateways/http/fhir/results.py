"""ImagingStudy (images archived) and DiagnosticReport (the report and its revisions) to loop events."""

from __future__ import annotations

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy

from refloop.domain import events as ev
from refloop.gateways.http.fhir.refs import KeyCollector, identifier_type
from refloop.gateways.http.fhir.translation import Context, NotTranslatable, Translation, last_updated, require_keys

V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CRITICAL_INTERPRETATIONS = {"AA", "HH", "LL"}  # critical abnormal / high / low


def imaging_study(s: ImagingStudy, ctx: Context) -> Translation:
    """available -> study_archived, with the study UID, accession and instance count."""
    if s.status != "available":
        raise NotTranslatable(
            f"ImagingStudy status '{s.status}' does not say the images are archived: refloop takes 'available'",
            expression=["ImagingStudy.status"],
        )
    keys = KeyCollector(ctx.resolver)
    for ident in s.identifier or []:
        keys.identifier(ident)
    for ref in s.basedOn or []:
        keys.reference(ref, untyped_means="placer")
    instances = s.numberOfInstances
    if instances is None:
        instances = sum((se.numberOfInstances or len(se.instance or [])) for se in s.series or [])
    event = ev.StudyArchived(
        event_id=ctx.event_id,
        occurred_at=ctx.when(last_updated(s)),
        source=ctx.sender,
        study_instance_uid=keys.study_uid,
        accession_number=keys.accession,
        instance_count=instances,
    )
    return Translation(event, require_keys(keys.keys(), "ImagingStudy", ["ImagingStudy.basedOn", "ImagingStudy.identifier"]))


def diagnostic_report(r: DiagnosticReport, ctx: Context) -> Translation:
    """preliminary/partial -> report_issued preliminary; final -> report_issued final;
    amended/corrected/appended -> report_revised; cancelled/entered-in-error -> report_withdrawn."""
    keys = KeyCollector(ctx.resolver)
    for ref in r.basedOn or []:
        keys.reference(ref, untyped_means="placer")
    for ident in r.identifier or []:
        keys.identifier(ident)
    for ref in r.imagingStudy or []:
        keys.reference(ref)
    own = [i.value for i in r.identifier or [] if i.value and identifier_type(i) not in ("ACSN", "PLAC", "FILL")]
    report_id = (own[0] if own else "") or r.id or ""
    base = dict(
        event_id=ctx.event_id,
        occurred_at=ctx.when(r.issued, last_updated(r)),
        source=ctx.sender,
        report_id=report_id,
    )
    status = r.status
    event: ev.EventBase
    if status in ("preliminary", "partial", "final"):
        kind = "final" if status == "final" else "preliminary"
        event = ev.ReportIssued(**base, status=kind, conclusion=r.conclusion or "", critical=_critical(r))
    elif status in ("amended", "corrected", "appended"):
        event = ev.ReportRevised(**base, revision=status, conclusion=r.conclusion or "", critical=_critical(r))
    elif status in ("cancelled", "entered-in-error"):
        reason = "cancelled" if status == "cancelled" else "entered_in_error"
        event = ev.ReportWithdrawn(**base, reason=reason, note=r.conclusion or "")
    else:
        raise NotTranslatable(
            f"DiagnosticReport status '{status}' is not a report yet: refloop takes preliminary, partial, final, "
            "amended, corrected, appended, cancelled and entered-in-error",
            expression=["DiagnosticReport.status"],
        )
    return Translation(event, require_keys(keys.keys(), "DiagnosticReport", ["DiagnosticReport.basedOn", "DiagnosticReport.identifier"]))


def _critical(r: DiagnosticReport) -> bool:
    """A critical result is flagged with a v3 ObservationInterpretation AA/HH/LL conclusion code."""
    for concept in r.conclusionCode or []:
        for coding in concept.coding or []:
            if coding.system == V3_INTERPRETATION and (coding.code or "").upper() in CRITICAL_INTERPRETATIONS:
                return True
    return False
