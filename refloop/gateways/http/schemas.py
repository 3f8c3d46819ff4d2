"""Bodies of the JSON API that are not events themselves."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from refloop.domain.referral import PatientId
from refloop.gateways.intake import Result, Status


class CorrelationKeys(BaseModel):
    """Identifiers that tie the event to its referral when the placer order number is not known."""

    placer_system: str = Field("", description="assigning system of the placer order number, if the referral is qualified by one")
    filler_order_number: str = ""
    accession_number: str = ""
    study_instance_uid: str = ""
    sps_id: str = ""
    requested_procedure_id: str = ""
    patient: PatientId | None = Field(None, description="binds only an arrival, and only to a booked loop not yet arrived")


class Receipt(BaseModel):
    """What became of the event. Every status here is a success: do not resend."""

    status: Literal["accepted", "parked", "ambiguous", "duplicate"] = Field(
        description="accepted: in its loop; parked: kept until its referral is known; "
        "ambiguous: several loops match, an operator decides; duplicate: received before (see first_status)"
    )
    referral_id: str = ""
    detail: str = ""
    first_status: str | None = None


def receipt(result: Result) -> Receipt:
    first = result.first_status.value if result.status == Status.DUPLICATE and result.first_status else None
    return Receipt(status=result.status.value, referral_id=result.referral_id, detail=result.detail, first_status=first)  # type: ignore[arg-type]
