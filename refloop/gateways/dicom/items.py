"""A loop as a Modality Worklist item (PS3.4 Annex K, PS3.3 C.30), and a worklist item as
the order and booking events it stands for (to take over an existing worklist database).

DICOM dates and times carry no zone: they are read and written in the department's zone.
"""

from __future__ import annotations

from datetime import datetime, time, tzinfo

from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import MAX_VALUE_LEN

from refloop.domain import events as ev
from refloop.domain.loop import Loop, Stage
from refloop.domain.referral import Appointment, Identifiers, Patient, PatientId, Priority, Requester, ServicePlan

PRIORITY_TO_DICOM = {Priority.STAT: "STAT", Priority.URGENT: "HIGH", Priority.ROUTINE: "ROUTINE"}
# DICOM has five levels (PS3.3 C.4.11); the loop has three.
PRIORITY_FROM_DICOM = {"STAT": Priority.STAT, "HIGH": Priority.URGENT, "ROUTINE": Priority.ROUTINE, "MEDIUM": Priority.ROUTINE, "LOW": Priority.ROUTINE}
SPS_STATUS = {Stage.SCHEDULED: "SCHEDULED", Stage.ARRIVED: "ARRIVED", Stage.IN_PROGRESS: "STARTED"}
# Coding scheme designators (PS3.16 Section 8) for the code systems orders use.
SCHEME_FOR_SYSTEM = {
    "http://loinc.org": "LN",
    "http://snomed.info/sct": "SCT",
    "http://www.radlex.org": "RADLEX",
    "http://dicom.nema.org/resources/ontology/DCM": "DCM",
}
SYSTEM_FOR_SCHEME = {v: k for k, v in SCHEME_FOR_SYSTEM.items()}


def dicom_date_time(dt: datetime | None, tz: tzinfo) -> tuple[str, str]:
    if dt is None:
        return "", ""
    local = dt.astimezone(tz)
    return local.strftime("%Y%m%d"), local.strftime("%H%M%S")


def parse_date_time(da: str, tm: str, tz: tzinfo) -> datetime | None:
    """DA + TM in the department's zone -> an aware datetime (None when the date is missing or bad)."""
    da, tm = (da or "").strip().replace(".", ""), (tm or "").strip().replace(":", "")
    try:
        day = datetime.strptime(da, "%Y%m%d")
    except ValueError:
        return None
    whole, _, fraction = tm.partition(".")
    whole = (whole + "000000")[:6] if whole.isdigit() else "000000"
    micro = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
    try:
        t = time(int(whole[:2]), int(whole[2:4]), int(whole[4:6]), micro)
    except ValueError:
        t = time()
    return datetime.combine(day.date(), t, tzinfo=tz)


# Free text a modality only displays: safe to shorten. Identifiers are never cut (a cut
# accession would no longer match its loop); an over-long one is the sender's to fix.
_FREE_TEXT = frozenset(
    {
        "ScheduledStationName",
        "ScheduledProcedureStepLocation",
        "ScheduledProcedureStepDescription",
        "RequestedProcedureDescription",
        "CodeMeaning",
        "InstitutionName",
        "AdmittingDiagnosesDescription",
        "MedicalAlerts",
        "Allergies",
    }
)


def fit_value_lengths(ds: Dataset) -> Dataset:
    """Cut free-text values to their VR's maximum length (LO 64, SH 16): order data such as a
    long location is often longer, and strict modalities refuse the item."""
    for elem in ds.iterall():
        limit = MAX_VALUE_LEN.get(elem.VR)
        if elem.keyword in _FREE_TEXT and limit and isinstance(elem.value, str) and len(elem.value) > limit:
            elem.value = elem.value[:limit].rstrip()
        elif elem.VR == "PN" and isinstance(elem.value, object) and elem.value and any(
            len(part) > 64 for part in str(elem.value).split("^")
        ):
            elem.value = "^".join(part[:64] for part in str(elem.value).split("^"))  # 64 chars per component
    return ds


def code_item(code: str, system: str, display: str) -> Dataset:
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = SCHEME_FOR_SYSTEM.get(system, system)[:16]
    item.CodeMeaning = display[:64]
    return item


def worklist_item(loop: Loop, tz: tzinfo) -> Dataset:
    """Every worklist attribute the loop knows; Type 2 attributes it does not know are empty."""
    ref = loop.referral
    patient = ref.patient or Patient(id=PatientId(value=""))
    service, appt, ids = ref.service, ref.appointment, ref.identifiers
    codes = Sequence([code_item(service.procedure_code, service.procedure_system, service.procedure_display)] if service.procedure_code else [])
    ds = Dataset()
    ds.AccessionNumber = ids.accession_number
    ds.ReferringPhysicianName = ref.requester.practitioner
    ds.PatientName = patient.name
    ds.PatientID = patient.id.value
    ds.IssuerOfPatientID = patient.id.issuer
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.MedicalAlerts = ""
    ds.Allergies = ""
    ds.StudyInstanceUID = ids.study_instance_uid
    ds.RequestingPhysician = ref.requester.practitioner
    ds.RequestedProcedureDescription = service.procedure_display
    ds.RequestedProcedureCodeSequence = codes
    ds.RequestedProcedureID = ids.requested_procedure_id
    ds.RequestedProcedurePriority = PRIORITY_TO_DICOM[service.priority]
    ds.PlacerOrderNumberImagingServiceRequest = ref.placer_order_number or ref.referral_id
    ds.FillerOrderNumberImagingServiceRequest = ids.filler_order_number
    start_date, start_time = dicom_date_time(appt.start, tz)
    sps = Dataset()
    sps.Modality = service.modality
    sps.RequestedContrastAgent = ""
    sps.ScheduledStationAETitle = list(appt.station_aet) if len(appt.station_aet) > 1 else "".join(appt.station_aet)
    sps.ScheduledProcedureStepStartDate = start_date
    sps.ScheduledProcedureStepStartTime = start_time
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepDescription = service.procedure_display
    sps.ScheduledProtocolCodeSequence = Sequence([code_item(service.procedure_code, service.procedure_system, service.procedure_display)] if service.procedure_code else [])
    sps.ScheduledProcedureStepID = ids.sps_id
    sps.ScheduledStationName = appt.station_name
    sps.ScheduledProcedureStepLocation = appt.location
    sps.PreMedication = ""
    sps.ScheduledProcedureStepStatus = SPS_STATUS.get(loop.stage, "")
    sps.CommentsOnTheScheduledProcedureStep = ""
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return fit_value_lengths(ds)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def events_from_item(ds: Dataset, referral_id: str, tz: tzinfo, received_at: datetime, source: str = "worklist") -> tuple[ev.OrderPlaced, ev.Scheduled]:
    """The order and the booking a worklist item stands for."""
    sps = ds.ScheduledProcedureStepSequence[0] if ds.get("ScheduledProcedureStepSequence") else Dataset()
    code = ds.RequestedProcedureCodeSequence[0] if ds.get("RequestedProcedureCodeSequence") else Dataset()
    aets = sps.get("ScheduledStationAETitle") or []
    aets = [str(a).strip() for a in ([aets] if isinstance(aets, str) else aets) if str(a).strip()]
    priority = PRIORITY_FROM_DICOM.get(_text(ds, "RequestedProcedurePriority").upper(), Priority.ROUTINE)
    ids = Identifiers(
        filler_order_number=_text(ds, "FillerOrderNumberImagingServiceRequest"),
        accession_number=_text(ds, "AccessionNumber"),
        requested_procedure_id=_text(ds, "RequestedProcedureID"),
        sps_id=_text(sps, "ScheduledProcedureStepID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
    )
    patient = Patient(
        id=PatientId(value=_text(ds, "PatientID"), issuer=_text(ds, "IssuerOfPatientID")),
        name=_text(ds, "PatientName"),
        birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex"),
    )
    scheme = _text(code, "CodingSchemeDesignator")
    order = ev.OrderPlaced(
        event_id=f"{referral_id}:worklist-order",
        occurred_at=received_at,
        source=source,
        placer_order_number=referral_id,
        patient=patient,
        requester=Requester(practitioner=_text(ds, "RequestingPhysician") or _text(ds, "ReferringPhysicianName")),
        service=ServicePlan(
            procedure_code=_text(code, "CodeValue"),
            procedure_system=SYSTEM_FOR_SCHEME.get(scheme, scheme),
            procedure_display=_text(ds, "RequestedProcedureDescription") or _text(code, "CodeMeaning"),
            modality=_text(sps, "Modality"),
            priority=priority,
        ),
        identifiers=ids,
    )
    booking = ev.Scheduled(
        event_id=f"{referral_id}:worklist-booking",
        occurred_at=received_at,
        source=source,
        appointment=Appointment(
            start=parse_date_time(_text(sps, "ScheduledProcedureStepStartDate"), _text(sps, "ScheduledProcedureStepStartTime"), tz),
            station_aet=aets,
            station_name=_text(sps, "ScheduledStationName"),
            location=_text(sps, "ScheduledProcedureStepLocation"),
        ),
        identifiers=ids,
        patient=patient.id,
    )
    return order, booking
