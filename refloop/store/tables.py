"""SQL tables: a read model of each loop and an append-only audit log.

Temporal's history stays the source of truth; these rows are written only by activities
(and by the gateways' inbox), idempotently, so a retried write changes nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class LoopRow(SQLModel, table=True):
    __tablename__ = "loops"
    referral_id: str = Field(primary_key=True)
    stage: str = Field(index=True)
    outcome: str = ""
    priority: str = ""
    modality: str = Field(default="", index=True)
    accession_number: str = Field(default="", index=True)
    escalation_level: int = 0
    needs_attention: bool = False
    stage_deadline: datetime | None = Field(default=None, index=True)
    updated_at: datetime
    # The loop as the workflow last persisted it (refloop.domain.loop.Loop JSON).
    state_json: str = Field(sa_column=Column(Text, nullable=False))
    # Temporal history length when written: a newer write never loses to an older one.
    history_length: int = 0


class LoopEventRow(SQLModel, table=True):
    """One timeline entry: every event, applied or ignored, with the reason."""

    __tablename__ = "loop_events"
    __table_args__ = (UniqueConstraint("referral_id", "seq"),)
    id: int | None = Field(default=None, primary_key=True)
    referral_id: str = Field(index=True)
    seq: int
    kind: str
    event_id: str = ""
    source: str = ""
    occurred_at: datetime | None = None
    received_at: datetime
    applied: bool
    note: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class EscalationRow(SQLModel, table=True):
    __tablename__ = "escalations"
    __table_args__ = (UniqueConstraint("referral_id", "seq"),)
    id: int | None = Field(default=None, primary_key=True)
    referral_id: str = Field(index=True)
    seq: int
    at: datetime
    stage: str
    level: int
    reason: str
    notified: str = ""  # where the notification went ("webhook", "log")


class IdentifierRow(SQLModel, table=True):
    """The correlation index: identifier -> referral. Patient IDs carry their issuer."""

    __tablename__ = "identifiers"
    __table_args__ = (UniqueConstraint("kind", "value", "referral_id"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)  # placer, filler, accession, study_uid, sps_id, rp_id, patient
    value: str = Field(index=True)
    referral_id: str = Field(index=True)


class InboxRow(SQLModel, table=True):
    """Every inbound message, raw, with what became of it."""

    __tablename__ = "inbox"
    __table_args__ = (UniqueConstraint("protocol", "sender", "message_key"),)
    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(index=True)
    protocol: str  # hl7, fhir, json, dicom, orthanc
    sender: str = ""
    message_key: str  # MSH-10, resource id + version, event_id, ... (idempotency)
    message_type: str = ""
    status: str = Field(index=True)  # accepted, rejected, parked, released, ambiguous
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    referral_id: str = Field(default="", index=True)
    event_kind: str = ""
    event_id: str = Field(default="", index=True)
    event_json: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    raw: str = Field(sa_column=Column(Text, nullable=False))


class ParkedKeyRow(SQLModel, table=True):
    """Identifiers a parked message can be matched on once its referral becomes known."""

    __tablename__ = "parked_keys"
    id: int | None = Field(default=None, primary_key=True)
    inbox_id: int = Field(index=True, foreign_key="inbox.id")
    kind: str = Field(index=True)
    value: str = Field(index=True)


class OutboxRow(SQLModel, table=True):
    """Messages to the outside world written with the loop state, sent by the outbox relay."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("referral_id", "topic", "seq"),)
    id: int | None = Field(default=None, primary_key=True)
    referral_id: str = Field(index=True)
    topic: str  # "milestone" (status to the requester)
    seq: int
    created_at: datetime
    payload_json: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", index=True)  # pending, sending, sent, failed, skipped
    attempts: int = 0
    last_error: str = ""
    sent_at: datetime | None = None
    # Backoff and claiming for the relay: not before this time; a claim expires at lease_until.
    next_attempt_at: datetime | None = None
    lease_until: datetime | None = None


class DeliveryAttemptRow(SQLModel, table=True):
    """One try at delivering a result (or its retraction, or why there is none) to the requester."""

    __tablename__ = "delivery_attempts"
    id: int | None = Field(default=None, primary_key=True)
    referral_id: str = Field(index=True)
    what: str  # result, exception, retraction
    version: int
    attempt: int  # Temporal's attempt number within one delivery
    delivery: str = ""  # workflow run + activity id: which delivery the attempt belongs to
    at: datetime
    channel: str = ""  # fhir, hl7
    endpoint: str = ""
    status_code: int | None = None
    ok: bool = False
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class CursorRow(SQLModel, table=True):
    """Where a feed follower (e.g. the Orthanc change feed) left off."""

    __tablename__ = "cursors"
    name: str = Field(primary_key=True)
    value: str
    updated_at: datetime


class SweepDigestRow(SQLModel, table=True):
    """What one escalation sweep found: stale loops, as a digest for operations."""

    __tablename__ = "sweep_digests"
    id: int | None = Field(default=None, primary_key=True)
    sweep_id: str = Field(unique=True)  # workflow run of the sweep
    swept_at: datetime = Field(index=True)
    task_queue: str = ""
    stale: int = 0
    overdue: int = 0
    escalated: int = 0
    attention: int = 0
    truncated: bool = False
    posted: str = ""  # "webhook", "none" (no webhook configured), "" (not yet)
    digest_json: str = Field(sa_column=Column(Text, nullable=False))
