"""The loop's state: where a referral stands, what is known, what happened (the timeline)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel

from refloop.domain.referral import PatientId, Referral


class Stage(StrEnum):
    NEW = "new"  # started by an early event, no order yet
    ORDERED = "ordered"
    SCHEDULED = "scheduled"
    ARRIVED = "arrived"
    IN_PROGRESS = "in_progress"
    ACQUIRED = "acquired"
    ARCHIVED = "archived"
    REPORTED_PRELIMINARY = "reported_preliminary"
    REPORTED_FINAL = "reported_final"
    DELIVERED = "delivered"
    CLOSED = "closed"
    # An identity mismatch at arrival waits for an operator.
    ON_HOLD = "on_hold"
    # Exception recorded; closes once its notice is delivered to the requester.
    DID_NOT_ATTEND = "did_not_attend"
    NOT_PERFORMED = "not_performed"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered_in_error"


HAPPY_PATH: tuple[Stage, ...] = (
    Stage.NEW,
    Stage.ORDERED,
    Stage.SCHEDULED,
    Stage.ARRIVED,
    Stage.IN_PROGRESS,
    Stage.ACQUIRED,
    Stage.ARCHIVED,
    Stage.REPORTED_PRELIMINARY,
    Stage.REPORTED_FINAL,
    Stage.DELIVERED,
    Stage.CLOSED,
)
RANK = {stage: i for i, stage in enumerate(HAPPY_PATH)}
EXCEPTION_STAGES = frozenset(
    {Stage.DID_NOT_ATTEND, Stage.NOT_PERFORMED, Stage.CANCELLED, Stage.ENTERED_IN_ERROR}
)


class Outcome(StrEnum):
    COMPLETED = "completed"
    DID_NOT_ATTEND = "did_not_attend"
    NOT_PERFORMED = "not_performed"
    CANCELLED = "cancelled"
    DUPLICATE = "duplicate"
    ENTERED_IN_ERROR = "entered_in_error"
    CLOSED_BY_OPERATOR = "closed_by_operator"


class ProcedureStep(BaseModel):
    """One MPPS instance as the modality reported it."""

    mpps_uid: str
    status: Literal["in_progress", "completed", "discontinued"] = "in_progress"
    procedure_code: str = ""
    series_count: int = 0
    instance_count: int = 0
    reason_code: str = ""


class Report(BaseModel):
    report_id: str = ""
    status: str = ""  # preliminary, final, amended, corrected, appended, withdrawn
    version: int = 0  # bumps on every final-or-later revision; deliveries and acks name it
    conclusion: str = ""
    critical: bool = False
    issued_at: datetime | None = None


class Anomaly(BaseModel):
    """Something an operator must look at: never a crash, never silently dropped."""

    at: datetime
    code: str
    detail: str
    resolved: bool = False
    # Discrepancies (wrong procedure, other patient ID) travel with the result to the requester.
    travels_with_result: bool = False


class Escalation(BaseModel):
    at: datetime
    stage: str
    level: int  # 1 remind, 2 escalate, 3 incident
    reason: str


class Hold(BaseModel):
    reason: str
    seen: PatientId | None = None
    resume_stage: Stage  # where the loop would be without the hold


class TimelineEntry(BaseModel):
    received_at: datetime
    occurred_at: datetime | None = None
    kind: str
    event_id: str = ""
    source: str = ""
    applied: bool
    note: str = ""


class Loop(BaseModel):
    referral: Referral
    stage: Stage = Stage.NEW
    stage_since: datetime | None = None
    outcome: Outcome | None = None
    outcome_reason: str = ""
    surviving_referral: str = ""
    ordered: bool = False
    milestones: dict[str, datetime] = {}
    hold: Hold | None = None
    procedure_steps: list[ProcedureStep] = []
    archived_instances: int = 0
    report: Report = Report()
    # What the requester has got and confirmed (report versions; 0 = nothing yet).
    delivered_version: int = 0
    acknowledged_version: int = 0
    pending_delivery: Literal["", "result", "exception", "retraction"] = ""
    escalation_level: int = 0
    escalations: list[Escalation] = []
    anomalies: list[Anomaly] = []
    timeline: list[TimelineEntry] = []
    seen_event_ids: list[str] = []
    closed_at: datetime | None = None
    # The no-show was inferred by our timer, not reported: later evidence of arrival reverses it.
    no_show_inferred: bool = False

    @property
    def needs_attention(self) -> bool:
        return self.stage == Stage.ON_HOLD or any(not a.resolved for a in self.anomalies)

    @property
    def open_anomalies(self) -> list[Anomaly]:
        return [a for a in self.anomalies if not a.resolved]

    @property
    def performed_instances(self) -> int:
        return sum(s.instance_count for s in self.procedure_steps if s.status == "completed")

    @property
    def is_finished(self) -> bool:
        """Closed or waiting only for an exception notice to go out."""
        return self.stage == Stage.CLOSED or self.stage in EXCEPTION_STAGES
