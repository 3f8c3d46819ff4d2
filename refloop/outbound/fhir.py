"""FHIR R4 resources for the requester, built with fhir.resources.R4B (same shape as R4).

- `diagnostic_report`: the result (final / amended / corrected / appended), its retraction
  (entered-in-error), or the reason there is no result (cancelled / entered-in-error).
- `status_task`: the order's fulfilment Task, updated at every milestone.

Resource ids are derived from the referral, so a retried PUT updates the same resource.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.task import Task, TaskInput, TaskOutput

from refloop.domain import codes
from refloop.domain.loop import Loop, Outcome, Stage
from refloop.domain.referral import PatientId, Referral
from refloop.outbound.status import milestone_text, order_status

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
# Our own code systems and extension (URNs: nothing to resolve, nothing to squat).
OUTCOME_SYSTEM = "urn:refloop:fhir:CodeSystem:loop-outcome"
MILESTONE_SYSTEM = "urn:refloop:fhir:CodeSystem:milestone"
REPORT_ID_SYSTEM = "urn:refloop:fhir:report-id"
REFERRAL_SYSTEM = "urn:refloop:fhir:referral-id"
REPORT_VERSION_EXT = "urn:refloop:fhir:StructureDefinition:report-version"
DISCREPANCY_EXT = "urn:refloop:fhir:StructureDefinition:discrepancy"

# HL7 v2 coding-system names (CE/CWE component 3) as FHIR system URIs.
_CODE_SYSTEMS = {
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "RADLEX": "http://www.radlex.org",
    "RID": "http://www.radlex.org",
    "DCM": DCM,
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
}
_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
_FHIR_ID = re.compile(r"^[A-Za-z0-9.\-]{1,64}$")

_OUTCOME_TEXT = {
    Outcome.DID_NOT_ATTEND: "patient did not attend",
    Outcome.NOT_PERFORMED: "procedure not performed",
    Outcome.CANCELLED: "order cancelled",
    Outcome.DUPLICATE: "duplicate order cancelled",
    Outcome.ENTERED_IN_ERROR: "entered in error",
    Outcome.CLOSED_BY_OPERATOR: "closed by the department",
    Outcome.COMPLETED: "completed",
}

_REPORT_STATUS = {"final": "final", "amended": "amended", "corrected": "corrected", "appended": "appended"}


def resource_id(referral_id: str) -> str:
    """A FHIR id for the referral's resources: readable when possible, collision-free always."""
    candidate = f"rl-{referral_id}"
    if _FHIR_ID.match(candidate):
        return candidate
    digest = hashlib.sha1(referral_id.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9.\-]+", "-", referral_id).strip("-")[:48]
    return f"rl-{slug}-{digest}"


def system_uri(name: str) -> str | None:
    """An HL7 v2 assigning authority / coding system name as a FHIR system URI."""
    name = name.strip()
    if not name:
        return None
    if name.upper() in _CODE_SYSTEMS:
        return _CODE_SYSTEMS[name.upper()]
    if _OID.match(name):
        return f"urn:oid:{name}"
    if ":" in name:
        return name  # already a URI (http:, urn:)
    # A bare HL7 namespace ID (CX-4.1): unique within the exchange; said so by the URN.
    return f"urn:refloop:assigning-authority:{name}"


def patient_identifier(pid: PatientId) -> Identifier:
    return Identifier(
        system=system_uri(pid.issuer),
        value=pid.value,
        assigner=Reference(display=pid.issuer) if pid.issuer else None,
    )


def _utc(at: datetime | None) -> datetime:
    at = at or datetime.now(timezone.utc)
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def service_request_ref(ref: Referral) -> Reference:
    """The requester's ServiceRequest, by the placer order number it gave us."""
    placer = ref.placer_order_number or ref.referral_id
    return Reference(
        type="ServiceRequest",
        identifier=Identifier(
            type=CodeableConcept(coding=[Coding(system=V2_0203, code="PLAC", display="Placer Identifier")]),
            system=system_uri(ref.identifiers.placer_system),
            value=placer,
        ),
    )


def subject_ref(ref: Referral) -> Reference | None:
    if not ref.patient:
        return None
    return Reference(type="Patient", identifier=patient_identifier(ref.patient.id))


def procedure_code(ref: Referral) -> CodeableConcept:
    s = ref.service
    text = s.procedure_display or s.procedure_code or (f"{s.modality} imaging" if s.modality else "imaging procedure")
    coding = [Coding(system=system_uri(s.procedure_system), code=s.procedure_code, display=s.procedure_display or None)] if s.procedure_code else None
    return CodeableConcept(coding=coding, text=text)


def _study_ref(ref: Referral) -> list[Reference] | None:
    uid = ref.identifiers.study_instance_uid
    if not uid:
        return None
    return [Reference(type="ImagingStudy", identifier=Identifier(system="urn:dicom:uid", value=f"urn:oid:{uid}"), display=f"Study {uid}")]


def _identifiers(loop: Loop) -> list[Identifier]:
    ref = loop.referral
    ids = [Identifier(system=REPORT_ID_SYSTEM, value=loop.report.report_id or ref.referral_id)]
    if ref.identifiers.accession_number:
        ids.append(
            Identifier(
                type=CodeableConcept(coding=[Coding(system=V2_0203, code="ACSN", display="Accession ID")]),
                value=ref.identifiers.accession_number,
            )
        )
    return ids


def discrepancies(loop: Loop) -> list[str]:
    """Discrepancies the department recorded that the requester must see with the result."""
    return [a.detail for a in loop.anomalies if a.travels_with_result]


def _performed_at(loop: Loop) -> datetime | None:
    for stage in (Stage.ACQUIRED, Stage.IN_PROGRESS):
        if stage.value in loop.milestones:
            return _utc(loop.milestones[stage.value])
    return None


def diagnostic_report(loop: Loop, what: str, version: int, performer: str) -> DiagnosticReport:
    """The DiagnosticReport for a delivery: `result`, `retraction` or `exception`."""
    ref = loop.referral
    report = loop.report
    extension = [Extension(url=REPORT_VERSION_EXT, valueInteger=version)]
    conclusion_code: list[CodeableConcept] = []
    issued = _utc(report.issued_at)
    if what == "result":
        status = _REPORT_STATUS.get(report.status, "final")
        conclusion = report.conclusion or "(no conclusion text)"
        if report.critical:
            conclusion = "CRITICAL RESULT. " + conclusion
            conclusion_code.append(
                CodeableConcept(coding=[Coding(system=INTERPRETATION, code="AA", display="Critical abnormal")], text="critical result")
            )
    elif what == "retraction":
        # The delivered report must not be used; a loop that was not entered in error gets a new one.
        status = "entered-in-error"
        if loop.stage == Stage.ENTERED_IN_ERROR:
            conclusion = f"Report withdrawn: {loop.outcome_reason or 'entered in error'}. Do not use it."
        else:
            conclusion = "Report withdrawn. Do not use it; a new report will follow."
        issued = _utc(loop.stage_since)
    else:
        status, conclusion, conclusion_code = _exception(loop)
        issued = _utc(loop.stage_since)
    found = discrepancies(loop)
    if found:
        conclusion += "\n\nDiscrepancies recorded by the department: " + "; ".join(found)
        extension += [Extension(url=DISCREPANCY_EXT, valueString=d) for d in found]
    return DiagnosticReport(
        id=resource_id(ref.referral_id),
        extension=extension,
        identifier=_identifiers(loop),
        basedOn=[service_request_ref(ref)],
        status=status,
        category=[CodeableConcept(coding=[Coding(system=V2_0074, code="RAD", display="Radiology")])],
        code=procedure_code(ref),
        subject=subject_ref(ref),
        effectiveDateTime=_performed_at(loop),
        issued=issued,
        performer=[Reference(display=performer)],
        imagingStudy=_study_ref(ref),
        conclusion=conclusion,
        conclusionCode=conclusion_code or None,
    )


def _exception(loop: Loop) -> tuple[str, str, list[CodeableConcept]]:
    """No result will come: FHIR `cancelled` ("not started or not completed"), with the reason.

    The requester's result inbox already files DiagnosticReports under their order, so a
    cancelled report with the reason in `conclusion` (text) and `conclusionCode` (coded) lands
    where the clinician looks for the result; a loop entered in error says so instead.
    """
    outcome = loop.outcome or Outcome.CLOSED_BY_OPERATOR
    status = "entered-in-error" if outcome == Outcome.ENTERED_IN_ERROR else "cancelled"
    text = _OUTCOME_TEXT[outcome]
    conclusion = f"No result: {text}."
    if loop.outcome_reason:
        conclusion += f" Reason: {loop.outcome_reason}."
    if loop.surviving_referral:
        conclusion += f" The order continues as {loop.surviving_referral}."
    coded = [CodeableConcept(coding=[Coding(system=OUTCOME_SYSTEM, code=outcome.value, display=text)], text=text)]
    reason_code = next((s.reason_code for s in reversed(loop.procedure_steps) if s.reason_code), "")
    if reason_code:
        coded.append(
            CodeableConcept(coding=[Coding(system=DCM, code=reason_code, display=codes.discontinuation_reason(reason_code))])
        )
    return status, conclusion, coded


def status_task(referral: Referral, milestone: dict, owner: str) -> Task:
    """The order's fulfilment Task as it stood at one milestone (`outbox` payload)."""
    name = milestone["milestone"]
    detail = milestone.get("detail", "")
    status = order_status(milestone["stage"])
    text = milestone_text(name, detail)
    reason = CodeableConcept(text=detail) if detail and name in ("delayed", "cancelled", "did_not_attend", "not_performed") else None
    inputs = None
    if name == "booked" and detail:
        inputs = [TaskInput(type=CodeableConcept(text="appointment start"), valueString=detail)]
    outputs = None
    if name == "report_available" and detail != "preliminary":
        outputs = [
            TaskOutput(
                type=CodeableConcept(text="result"),
                valueReference=Reference(reference=f"DiagnosticReport/{resource_id(referral.referral_id)}"),
            )
        ]
    return Task(
        id=resource_id(referral.referral_id),
        identifier=[Identifier(system=REFERRAL_SYSTEM, value=referral.referral_id)],
        basedOn=[service_request_ref(referral)],
        status=status.task,
        statusReason=reason,
        businessStatus=CodeableConcept(coding=[Coding(system=MILESTONE_SYSTEM, code=name)], text=text),
        intent="order",
        code=CodeableConcept(coding=[Coding(system=TASK_CODE, code="fulfill", display="Fulfill the focal request")]),
        focus=service_request_ref(referral),
        for_fhir=subject_ref(referral),
        lastModified=_utc(datetime.fromisoformat(milestone["at"])) if milestone.get("at") else None,
        owner=Reference(display=owner),
        input=inputs,
        output=outputs,
    )
