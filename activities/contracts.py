"""Inputs and outputs of activities. Pydantic only, so workflows can import them cheaply."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from refloop.domain.loop import Loop


class PersistRequest(BaseModel):
    loop: Loop
    timeline_from: int
    escalations_from: int
    milestones: list[tuple[int, dict]] = []
    stage_deadline: datetime | None = None
    history_length: int = 0


class PersistResult(BaseModel):
    released: list[dict] = []  # parked events that now match this loop (event JSON)


class EscalationRequest(BaseModel):
    referral_id: str
    seq: int
    level: int
    level_name: str
    stage: str
    reason: str
    priority: str = ""
    modality: str = ""
    accession_number: str = ""


class DeliveryRequest(BaseModel):
    loop: Loop
    what: str  # result, exception, retraction
    version: int


class DeliveryResult(BaseModel):
    delivered: bool
    channel: str = ""
    detail: str = ""
