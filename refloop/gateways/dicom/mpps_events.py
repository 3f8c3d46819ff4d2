"""What an MPPS instance says, as loop events and correlation keys (PS3.4 Annex F, PS3.3 C.4.13-17)."""

from __future__ import annotations

from datetime import datetime, tzinfo

from pydicom import Dataset

from refloop.domain import events as ev
from refloop.domain.referral import Identifiers, PatientId
from refloop.gateways.dicom.items import parse_date_time
from refloop.gateways.intake import Keys
from refloop.store.imaging import COMPLETED


def text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _first_code(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def patient(ds: Dataset) -> PatientId | None:
    pid = text(ds, "PatientID")
    return PatientId(value=pid, issuer=text(ds, "IssuerOfPatientID")) if pid else None


def step_keys(ds: Dataset) -> list[Keys]:
    """One set of correlation keys per scheduled step the MPPS performed (several = IHE group case)."""
    out: list[Keys] = []
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        keys = Keys(
            accession_number=text(item, "AccessionNumber"),
            study_instance_uid=text(item, "StudyInstanceUID"),
            sps_id=text(item, "ScheduledProcedureStepID"),
            requested_procedure_id=text(item, "RequestedProcedureID"),
            patient=patient(ds),
        )
        if keys not in out:
            out.append(keys)
    return out or [Keys(patient=patient(ds))]


def performed_counts(ds: Dataset) -> tuple[int, int]:
    """(series, instances) the modality says it produced: referenced SOPs in PerformedSeriesSequence."""
    series = ds.get("PerformedSeriesSequence") or []
    instances = sum(
        len(s.get("ReferencedImageSequence") or []) + len(s.get("ReferencedNonImageCompositeSOPInstanceSequence") or [])
        for s in series
    )
    return len(series), instances


def performed_procedure(ds: Dataset) -> tuple[str, str]:
    """The procedure the modality performed: its procedure code, else its protocol code."""
    code = _first_code(ds, "ProcedureCodeSequence") or _first_code(ds, "PerformedProtocolCodeSequence")
    return (text(code, "CodeValue"), text(code, "CodeMeaning")) if code is not None else ("", "")


def discontinuation_reason(ds: Dataset) -> tuple[str, str]:
    """CID 9300 code and meaning from (0040,0281)."""
    code = _first_code(ds, "PerformedProcedureStepDiscontinuationReasonCodeSequence")
    return (text(code, "CodeValue"), text(code, "CodeMeaning")) if code is not None else ("", "")


def started(uid: str, ds: Dataset, keys: Keys, calling_ae: str, tz: tzinfo, now: datetime) -> ev.ProcedureStarted:
    code, display = performed_procedure(ds)
    at = parse_date_time(text(ds, "PerformedProcedureStepStartDate"), text(ds, "PerformedProcedureStepStartTime"), tz)
    return ev.ProcedureStarted(
        event_id=f"mpps:{uid}:started",
        occurred_at=at or now,
        source=f"dicom:{calling_ae}",
        mpps_uid=uid,
        patient=patient(ds),
        procedure_code=code,
        procedure_display=display,
        identifiers=Identifiers(
            accession_number=keys.accession_number,
            requested_procedure_id=keys.requested_procedure_id,
            sps_id=keys.sps_id,
            study_instance_uid=keys.study_instance_uid,
        ),
        station_aet=text(ds, "PerformedStationAETitle") or calling_ae,
    )


def finished(uid: str, ds: Dataset, calling_ae: str, tz: tzinfo, now: datetime) -> ev.ProcedureCompleted | ev.ProcedureDiscontinued:
    """The event for an MPPS whose status is COMPLETED or DISCONTINUED."""
    series, instances = performed_counts(ds)
    at = parse_date_time(text(ds, "PerformedProcedureStepEndDate"), text(ds, "PerformedProcedureStepEndTime"), tz) or now
    source = f"dicom:{calling_ae}"
    if text(ds, "PerformedProcedureStepStatus") == COMPLETED:
        return ev.ProcedureCompleted(
            event_id=f"mpps:{uid}:completed", occurred_at=at, source=source, mpps_uid=uid, series_count=series, instance_count=instances
        )
    code, meaning = discontinuation_reason(ds)
    return ev.ProcedureDiscontinued(
        event_id=f"mpps:{uid}:discontinued",
        occurred_at=at,
        source=source,
        mpps_uid=uid,
        reason_code=code,
        reason=meaning,
        series_count=series,
        instance_count=instances,
    )
