"""What a referral is: who, for what, booked where, and the identifiers learnt on the way."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Priority(StrEnum):
    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"


class PatientId(BaseModel):
    """A patient identifier is only meaningful with its issuer: same value, other issuer = other patient."""

    model_config = ConfigDict(frozen=True)
    value: str
    issuer: str = ""

    def __str__(self) -> str:
        return f"{self.value}^^^{self.issuer}" if self.issuer else self.value


class Patient(BaseModel):
    id: PatientId
    name: str = ""  # DICOM PN / HL7 XPN style, e.g. "Smith^Lucy"
    birth_date: str = ""  # YYYYMMDD as the sources send it
    sex: str = ""


class Requester(BaseModel):
    practitioner: str = ""
    organization: str = ""
    # Where results and status updates go; empty = the requester collects them another way.
    endpoint: str = ""
    channel: str = "fhir"  # "fhir" (HTTP) or "hl7" (MLLP host:port)


class ServicePlan(BaseModel):
    procedure_code: str = ""
    procedure_system: str = ""
    procedure_display: str = ""
    modality: str = ""
    body_site: str = ""
    priority: Priority = Priority.ROUTINE


class Appointment(BaseModel):
    start: datetime | None = None
    station_aet: list[str] = []
    station_name: str = ""
    location: str = ""


class Identifiers(BaseModel):
    """Department-side identifiers; any may be learnt late. Empty string = not known yet."""

    placer_system: str = ""
    filler_order_number: str = ""
    accession_number: str = ""
    requested_procedure_id: str = ""
    sps_id: str = ""
    study_instance_uid: str = ""

    def merged(self, other: Identifiers) -> Identifiers:
        data = self.model_dump()
        for key, value in other.model_dump().items():
            if value:
                data[key] = value
        return Identifiers(**data)


class Referral(BaseModel):
    referral_id: str  # placer order number, qualified by the placer's system when given
    placer_order_number: str = ""
    patient: Patient | None = None
    requester: Requester = Requester()
    service: ServicePlan = ServicePlan()
    appointment: Appointment = Appointment()
    identifiers: Identifiers = Identifiers()


def referral_key(placer_order_number: str, placer_system: str = "") -> str:
    """The referral's identity: placer order number, qualified by the placer's assigning system."""
    placer_order_number = placer_order_number.strip()
    if not placer_order_number:
        raise ValueError("a referral needs a placer order number")
    return f"{placer_system.strip()}:{placer_order_number}" if placer_system.strip() else placer_order_number
