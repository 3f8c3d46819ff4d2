"""Inputs and outputs of activities. Pydantic only, so workflows can import them cheaply."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from refloop.domain.loop import Loop
from refloop.visibility import LoopListing


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


class SweepInput(BaseModel):
    """What one sweep looks at: the referral loops of one task queue (one deployment)."""

    task_queue: str
    limit: int = 1000  # digest size cap; the count says when there were more


class FindStaleRequest(BaseModel):
    task_queue: str
    now: datetime
    limit: int = 1000


class StaleLoop(LoopListing):
    reasons: list[str] = []  # overdue, escalated, attention


class FindStaleResult(BaseModel):
    loops: list[StaleLoop] = []
    truncated: bool = False


class SweepDigest(BaseModel):
    sweep_id: str  # the sweep's workflow run: a retried write changes nothing
    swept_at: datetime
    task_queue: str
    loops: list[StaleLoop] = []
    truncated: bool = False

    def count(self, reason: str) -> int:
        return sum(1 for loop in self.loops if reason in loop.reasons)
