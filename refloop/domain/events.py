"""Typed events: what back-end systems report, already translated from their protocol.

Every event carries an idempotency key (`event_id`), the time it happened at its source
(`occurred_at`) and who reported it (`source`). `kind` is also the workflow signal name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter

from refloop.domain.referral import (
    Appointment,
    Identifiers,
    Patient,
    PatientId,
    Requester,
    ServicePlan,
)


class EventBase(BaseModel):
    event_id: str = Field(min_length=1)
    occurred_at: datetime
    source: str = ""


class OrderPlaced(EventBase):
    kind: Literal["order_placed"] = "order_placed"
    placer_order_number: str = ""
    patient: Patient | None = None
    requester: Requester = Requester()
    service: ServicePlan = ServicePlan()
    identifiers: Identifiers = Identifiers()
    appointment: Appointment | None = None


class OrderChanged(EventBase):
    kind: Literal["order_changed"] = "order_changed"
    service: ServicePlan | None = None
    requester: Requester | None = None


class Scheduled(EventBase):
    kind: Literal["scheduled"] = "scheduled"
    appointment: Appointment
    identifiers: Identifiers = Identifiers()
    patient: PatientId | None = None


class Rescheduled(EventBase):
    kind: Literal["rescheduled"] = "rescheduled"
    appointment: Appointment


class AppointmentCancelled(EventBase):
    kind: Literal["appointment_cancelled"] = "appointment_cancelled"
    reason: str = ""


class Arrived(EventBase):
    kind: Literal["arrived"] = "arrived"
    patient: PatientId  # the identity confirmed at the desk


class ProcedureStarted(EventBase):
    kind: Literal["procedure_started"] = "procedure_started"
    mpps_uid: str = ""
    patient: PatientId | None = None
    procedure_code: str = ""
    procedure_display: str = ""
    identifiers: Identifiers = Identifiers()
    station_aet: str = ""


class ProcedureCompleted(EventBase):
    kind: Literal["procedure_completed"] = "procedure_completed"
    mpps_uid: str = ""
    series_count: int = Field(default=0, ge=0)
    instance_count: int = Field(default=0, ge=0)


class ProcedureDiscontinued(EventBase):
    kind: Literal["procedure_discontinued"] = "procedure_discontinued"
    mpps_uid: str = ""
    reason_code: str = ""  # CID 9300, DCM 110500-110516
    reason: str = ""
    series_count: int = Field(default=0, ge=0)
    instance_count: int = Field(default=0, ge=0)


class StudyArchived(EventBase):
    kind: Literal["study_archived"] = "study_archived"
    study_instance_uid: str = ""
    accession_number: str = ""
    instance_count: int = Field(default=0, ge=0)


class ReportIssued(EventBase):
    kind: Literal["report_issued"] = "report_issued"
    status: Literal["preliminary", "final"]
    report_id: str = ""
    conclusion: str = ""
    critical: bool = False


class ReportRevised(EventBase):
    kind: Literal["report_revised"] = "report_revised"
    revision: Literal["amended", "corrected", "appended"]
    report_id: str = ""
    conclusion: str = ""
    critical: bool = False


class ReportWithdrawn(EventBase):
    kind: Literal["report_withdrawn"] = "report_withdrawn"
    reason: Literal["cancelled", "entered_in_error"]
    report_id: str = ""
    note: str = ""


class ResultDelivered(EventBase):
    kind: Literal["result_delivered"] = "result_delivered"
    what: Literal["result", "exception", "retraction"] = "result"
    report_version: int = 0
    channel: str = ""


class ResultAcknowledged(EventBase):
    kind: Literal["result_acknowledged"] = "result_acknowledged"
    report_version: int | None = None  # None: acknowledges what was delivered last
    by: str = ""


class ReferralCancelled(EventBase):
    kind: Literal["referral_cancelled"] = "referral_cancelled"
    reason: Literal["duplicate", "requester", "clinical", "patient", "other"] = "other"
    surviving_referral: str = ""
    note: str = ""


class DidNotAttend(EventBase):
    kind: Literal["did_not_attend"] = "did_not_attend"
    note: str = ""


class UnableToPerform(EventBase):
    kind: Literal["unable_to_perform"] = "unable_to_perform"
    reason_code: str = ""
    reason: str = ""


class PatientMerged(EventBase):
    kind: Literal["patient_merged"] = "patient_merged"
    old: PatientId
    new: PatientId


Event = Annotated[
    Union[
        OrderPlaced,
        OrderChanged,
        Scheduled,
        Rescheduled,
        AppointmentCancelled,
        Arrived,
        ProcedureStarted,
        ProcedureCompleted,
        ProcedureDiscontinued,
        StudyArchived,
        ReportIssued,
        ReportRevised,
        ReportWithdrawn,
        ResultDelivered,
        ResultAcknowledged,
        ReferralCancelled,
        DidNotAttend,
        UnableToPerform,
        PatientMerged,
    ],
    Field(discriminator="kind"),
]

EVENT_TYPES: dict[str, type[EventBase]] = {
    t.model_fields["kind"].default: t for t in Event.__origin__.__args__  # type: ignore[attr-defined]
}
EVENT_KINDS: tuple[str, ...] = tuple(EVENT_TYPES)

_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: dict | str | bytes) -> Event:
    """Validate a JSON object (or text) into the matching typed event."""
    if isinstance(data, (str, bytes)):
        return _adapter.validate_json(data)
    return _adapter.validate_python(data)


# --- operator commands (workflow updates) -------------------------------------------------


class CloseLoop(BaseModel):
    reason: str = Field(min_length=1)
    operator: str = ""


class ResolveIdentityHold(BaseModel):
    decision: Literal["accept", "reject"]
    note: str = ""
    operator: str = ""


class ReopenLoop(BaseModel):
    reason: str = Field(min_length=1)
    operator: str = ""


class Redeliver(BaseModel):
    reason: str = Field(min_length=1)
    operator: str = ""
