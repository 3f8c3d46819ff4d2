"""SQL for the imaging gateways: MPPS instances, feed cursors, worklist reads.

MPPS state lives here (not in memory) so a restarted SCP still answers N-SET correctly:
0x0112 for an instance it never saw, 0x0110 once an instance reached a final state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Column, Text
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

from refloop.domain.loop import Loop
from refloop.store.repo import utcnow
from refloop.store.tables import CursorRow, LoopRow

# MPPS states (PS3.3 C.4.14 Performed Procedure Step Status).
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
FINAL_STATES = frozenset({COMPLETED, DISCONTINUED})
ORPHAN = ""  # N-SETs arrived for an instance whose N-CREATE we have not seen (yet)


class MppsRow(SQLModel, table=True):
    """One Modality Performed Procedure Step instance as the modality reported it."""

    __tablename__ = "mpps_instances"
    sop_instance_uid: str = Field(primary_key=True)
    status: str = Field(default=ORPHAN, index=True)
    calling_ae: str = ""
    referral_id: str = Field(default="", index=True)  # set when the N-CREATE reached its loop
    accession_number: str = Field(default="", index=True)
    sps_id: str = ""
    requested_procedure_id: str = ""
    study_instance_uid: str = Field(default="", index=True)
    patient_id: str = ""
    patient_issuer: str = ""
    procedure_code: str = ""
    series_count: int = 0
    instance_count: int = 0
    reason_code: str = ""
    created_at: datetime
    updated_at: datetime
    # The instance's attributes as DICOM JSON (N-CREATE merged with every accepted N-SET).
    attributes_json: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    # N-SET modification lists (DICOM JSON) received before the N-CREATE; replayed after it.
    pending_sets_json: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))


class ReadingNotificationRow(SQLModel, table=True):
    """A loop the reporting system was told is ready to read (the webhook fires once per loop)."""

    __tablename__ = "reading_notifications"
    referral_id: str = Field(primary_key=True)
    notified_at: datetime
    status_code: int = 0


class ImagingStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    # --- worklists ----------------------------------------------------------------------------

    def loops_in_stages(self, stages: Iterable[str], **narrow) -> list[Loop]:
        return [Loop.model_validate_json(j) for _, j in self.loop_states_in_stages(stages, **narrow)]

    def loop_states_in_stages(
        self,
        stages: Iterable[str],
        *,
        modality: str = "",
        accession_number: str = "",
        exclude_started: bool = False,
    ) -> list[tuple[str, str]]:
        """(referral_id, loop JSON) in these stages, narrowed on indexed columns when known.

        exclude_started drops loops with an MPPS in progress or completed: the SCP writes the
        MPPS row before the workflow persists the new stage, so this closes that window.
        """
        with Session(self.engine) as s:
            q = select(LoopRow.referral_id, LoopRow.state_json).where(LoopRow.stage.in_(list(stages)))  # type: ignore[attr-defined]
            if modality:
                q = q.where(LoopRow.modality == modality)
            if accession_number:
                q = q.where(LoopRow.accession_number == accession_number)
            if exclude_started:
                started = select(MppsRow.referral_id).where(
                    MppsRow.referral_id != "", MppsRow.status.in_([IN_PROGRESS, COMPLETED])  # type: ignore[attr-defined]
                )
                q = q.where(LoopRow.referral_id.not_in(started))  # type: ignore[attr-defined]
            return [(rid, j) for rid, j in s.exec(q.order_by(LoopRow.referral_id)).all()]

    # --- MPPS instances -----------------------------------------------------------------------

    def get_mpps(self, uid: str) -> MppsRow | None:
        with Session(self.engine) as s:
            return s.get(MppsRow, uid)

    def save_mpps(self, row: MppsRow) -> None:
        row.updated_at = utcnow()
        with Session(self.engine) as s:
            s.merge(row)
            s.commit()

    def park_mpps_set(self, uid: str, calling_ae: str, modification_json: dict) -> int:
        """Keep an N-SET for an instance without N-CREATE; returns how many are now waiting."""
        with Session(self.engine) as s:
            row = s.get(MppsRow, uid)
            now = utcnow()
            if row is None:
                row = MppsRow(sop_instance_uid=uid, calling_ae=calling_ae, created_at=now, updated_at=now)
            pending = json.loads(row.pending_sets_json)
            pending.append(modification_json)
            row.pending_sets_json = json.dumps(pending)
            row.updated_at = now
            s.add(row)
            s.commit()
            return len(pending)

    def mpps_for_referral(self, referral_id: str) -> list[MppsRow]:
        with Session(self.engine) as s:
            return list(s.exec(select(MppsRow).where(MppsRow.referral_id == referral_id).order_by(MppsRow.created_at)).all())  # type: ignore[arg-type]

    # --- feed cursors -------------------------------------------------------------------------

    def get_cursor(self, name: str, default: str = "") -> str:
        with Session(self.engine) as s:
            row = s.get(CursorRow, name)
            return row.value if row else default

    def set_cursor(self, name: str, value: str) -> None:
        with Session(self.engine) as s:
            row = s.get(CursorRow, name) or CursorRow(name=name, value=value, updated_at=utcnow())
            row.value, row.updated_at = value, utcnow()
            s.add(row)
            s.commit()

    # --- "study ready to read" notifications --------------------------------------------------

    def reading_notified(self, referral_ids: Iterable[str]) -> set[str]:
        ids = list(referral_ids)
        if not ids:
            return set()
        with Session(self.engine) as s:
            q = select(ReadingNotificationRow.referral_id).where(ReadingNotificationRow.referral_id.in_(ids))  # type: ignore[attr-defined]
            return set(s.exec(q).all())

    def mark_reading_notified(self, referral_id: str, status_code: int) -> None:
        with Session(self.engine) as s:
            s.merge(ReadingNotificationRow(referral_id=referral_id, notified_at=utcnow(), status_code=status_code))
            s.commit()
