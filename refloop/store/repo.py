"""Reads and idempotent writes over the SQL store. Shared by activities, gateways and the CLI."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlalchemy import and_, delete, or_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from refloop.domain.loop import Loop
from refloop.domain.referral import PatientId, Referral
from refloop.store.tables import (
    EscalationRow,
    IdentifierRow,
    InboxRow,
    LoopEventRow,
    LoopRow,
    OutboxRow,
    ParkedKeyRow,
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def patient_key(pid: PatientId) -> str:
    """Index key for a patient: the ID is only meaningful with its issuer."""
    return f"{pid.value}^^^{pid.issuer}"


def identifier_keys(referral: Referral) -> set[tuple[str, str]]:
    """Every (kind, value) a loop can be found by."""
    ids = referral.identifiers
    keys = {("placer", referral.referral_id)}
    if referral.placer_order_number and referral.placer_order_number != referral.referral_id:
        # "X" finds the referral "SYSTEM:X" when a sender names the order without its system.
        keys.add(("placer_number", referral.placer_order_number))
    for kind, value in (
        ("filler", ids.filler_order_number),
        ("accession", ids.accession_number),
        ("study_uid", ids.study_instance_uid),
        ("sps_id", ids.sps_id),
        ("rp_id", ids.requested_procedure_id),
    ):
        if value:
            keys.add((kind, value))
    if referral.patient:
        keys.add(("patient", patient_key(referral.patient.id)))
    return keys


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine

    def _insert_ignore(self, session: Session, model, rows: list[dict], conflict: list[str]) -> None:
        if not rows:
            return
        dialect = self.engine.dialect.name
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(model.__table__)
        # Rows as executemany parameters of one Core statement, compiled once and cached; a
        # multi-row VALUES clause through the ORM compiled anew for every row count (most of
        # persist's CPU). Same transaction as the session's ORM writes.
        session.connection().execute(ins.on_conflict_do_nothing(index_elements=conflict), rows)

    # --- written by the workflow's persist activity ----------------------------------------

    def persist_loop(
        self,
        loop: Loop,
        *,
        timeline_from: int,
        escalations_from: int,
        milestones: list[tuple[int, dict]],
        stage_deadline: datetime | None,
        history_length: int,
    ) -> list[dict]:
        """Write the read model, audit log and outbox in one transaction.

        Returns parked events that now match this loop's identifiers and that the loop has
        not applied yet; the workflow applies them (idempotent by event_id).
        """
        ref = loop.referral
        rid = ref.referral_id
        now = utcnow()
        with Session(self.engine) as s:
            row = s.get(LoopRow, rid)
            if row is None or row.history_length <= history_length:
                values = dict(
                    stage=loop.stage.value,
                    outcome=loop.outcome.value if loop.outcome else "",
                    priority=ref.service.priority.value,
                    modality=ref.service.modality,
                    accession_number=ref.identifiers.accession_number,
                    escalation_level=loop.escalation_level,
                    needs_attention=loop.needs_attention,
                    stage_deadline=stage_deadline,
                    updated_at=now,
                    state_json=loop.model_dump_json(),
                    history_length=history_length,
                )
                if row is None:
                    s.add(LoopRow(referral_id=rid, **values))
                else:
                    for k, v in values.items():
                        setattr(row, k, v)
                    s.add(row)
            self._insert_ignore(
                s,
                LoopEventRow,
                [
                    dict(
                        referral_id=rid,
                        seq=i,
                        kind=t.kind,
                        event_id=t.event_id,
                        source=t.source,
                        occurred_at=t.occurred_at,
                        received_at=t.received_at,
                        applied=t.applied,
                        note=t.note,
                    )
                    for i, t in enumerate(loop.timeline)
                    if i >= timeline_from
                ],
                ["referral_id", "seq"],
            )
            self._insert_ignore(
                s,
                EscalationRow,
                [
                    dict(referral_id=rid, seq=i, at=e.at, stage=e.stage, level=e.level, reason=e.reason, notified="")
                    for i, e in enumerate(loop.escalations)
                    if i >= escalations_from
                ],
                ["referral_id", "seq"],
            )
            self._insert_ignore(
                s,
                OutboxRow,
                [
                    dict(referral_id=rid, topic="milestone", seq=seq, created_at=now, payload_json=json.dumps(payload), status="pending", attempts=0, last_error="")
                    for seq, payload in milestones
                ],
                ["referral_id", "topic", "seq"],
            )
            # The index mirrors the loop's current identifiers (a merge re-points the patient).
            keys = identifier_keys(ref)
            existing = {(r.kind, r.value) for r in s.exec(select(IdentifierRow).where(IdentifierRow.referral_id == rid))}
            for kind, value in existing - keys:
                s.exec(delete(IdentifierRow).where(IdentifierRow.referral_id == rid, IdentifierRow.kind == kind, IdentifierRow.value == value))  # type: ignore[call-overload]
            self._insert_ignore(
                s,
                IdentifierRow,
                [dict(kind=k, value=v, referral_id=rid) for k, v in keys - existing],
                ["kind", "value", "referral_id"],
            )
            released = self._parked_for(s, loop, keys, rid)
            s.commit()
        return released

    def _parked_for(self, s: Session, loop: Loop, keys: set[tuple[str, str]], rid: str) -> list[dict]:
        seen = set(loop.seen_event_ids)
        # Patient alone binds only an arrival, and only to a loop booked and awaiting it:
        # one patient has many referrals.
        strong = [and_(ParkedKeyRow.kind == k, ParkedKeyRow.value == v) for k, v in keys if k != "patient"]
        if loop.stage.value in ("ordered", "scheduled"):
            strong += [
                and_(ParkedKeyRow.kind == k, ParkedKeyRow.value == v, InboxRow.event_kind == "arrived")
                for k, v in keys
                if k == "patient"
            ]
        if not strong:
            return []
        rows = s.exec(
            select(InboxRow)
            .join(ParkedKeyRow, ParkedKeyRow.inbox_id == InboxRow.id)  # type: ignore[arg-type]
            .where(InboxRow.status == "parked")
            .where(or_(*strong))
            .order_by(InboxRow.id)  # type: ignore[arg-type]
        ).all()
        out: list[dict] = []
        for row in {r.id: r for r in rows}.values():
            if row.event_id in seen:
                row.status, row.referral_id = "released", rid
                s.add(row)
            else:
                out.append(json.loads(row.event_json))
        return out

    def record_escalation_notified(self, referral_id: str, seq: int, notified: str) -> None:
        with Session(self.engine) as s:
            row = s.exec(select(EscalationRow).where(EscalationRow.referral_id == referral_id, EscalationRow.seq == seq)).first()
            if row:
                row.notified = notified
                s.add(row)
                s.commit()

    # --- reads ------------------------------------------------------------------------------

    def get_loop(self, referral_id: str) -> Loop | None:
        with Session(self.engine) as s:
            row = s.get(LoopRow, referral_id)
            return Loop.model_validate_json(row.state_json) if row else None

    def find_referrals(self, kind: str, value: str) -> list[str]:
        with Session(self.engine) as s:
            return sorted(
                set(s.exec(select(IdentifierRow.referral_id).where(IdentifierRow.kind == kind, IdentifierRow.value == value)).all())
            )

    def resolve(self, ident: str) -> str | None:
        """A referral from a placer order number or an accession number."""
        with Session(self.engine) as s:
            if s.get(LoopRow, ident):
                return ident
        for kind in ("placer", "placer_number", "accession", "filler"):
            found = self.find_referrals(kind, ident)
            if len(found) == 1:
                return found[0]
        return None

    def timeline(self, referral_id: str) -> list[LoopEventRow]:
        with Session(self.engine) as s:
            return list(s.exec(select(LoopEventRow).where(LoopEventRow.referral_id == referral_id).order_by(LoopEventRow.seq)).all())  # type: ignore[arg-type]

    def escalations(self, referral_id: str) -> list[EscalationRow]:
        with Session(self.engine) as s:
            return list(s.exec(select(EscalationRow).where(EscalationRow.referral_id == referral_id).order_by(EscalationRow.seq)).all())  # type: ignore[arg-type]

    def loops(self, stage: str | None = None, attention: bool | None = None, limit: int = 500) -> list[LoopRow]:
        with Session(self.engine) as s:
            q = select(LoopRow)
            if stage:
                q = q.where(LoopRow.stage == stage)
            if attention is not None:
                q = q.where(LoopRow.needs_attention == attention)
            return list(s.exec(q.order_by(LoopRow.updated_at.desc()).limit(limit)).all())  # type: ignore[attr-defined]


class InboxStore:
    """The gateways' inbox: every inbound message kept raw, deduplicated by its message key."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def claim(self, protocol: str, sender: str, message_key: str, message_type: str, raw: str) -> tuple[InboxRow, bool]:
        """Insert the message, or return the row already there. Returns (row, is_new)."""
        with Session(self.engine) as s:
            existing = s.exec(
                select(InboxRow).where(InboxRow.protocol == protocol, InboxRow.sender == sender, InboxRow.message_key == message_key)
            ).first()
            if existing:
                return existing, False
            row = InboxRow(
                received_at=utcnow(), protocol=protocol, sender=sender, message_key=message_key,
                message_type=message_type, status="received", raw=raw,
            )
            s.add(row)
            try:
                s.commit()
            except Exception:  # a concurrent retry of the same message won the insert
                s.rollback()
                existing = s.exec(
                    select(InboxRow).where(InboxRow.protocol == protocol, InboxRow.sender == sender, InboxRow.message_key == message_key)
                ).first()
                if existing is None:
                    raise
                return existing, False
            s.refresh(row)
            return row, True

    def update(self, row_id: int, **values) -> None:
        with Session(self.engine) as s:
            row = s.get(InboxRow, row_id)
            if row is None:
                return
            for k, v in values.items():
                setattr(row, k, v)
            s.add(row)
            s.commit()

    def park(self, row_id: int, event_json: str, event_kind: str, event_id: str, keys: list[tuple[str, str]], status: str = "parked", error: str = "") -> None:
        with Session(self.engine) as s:
            row = s.get(InboxRow, row_id)
            assert row is not None
            row.status, row.event_json, row.event_kind, row.event_id, row.error = status, event_json, event_kind, event_id, error
            s.add(row)
            for kind, value in keys:
                s.add(ParkedKeyRow(inbox_id=row_id, kind=kind, value=value))
            s.commit()

    def list(self, status: str | None = None, limit: int = 100) -> list[InboxRow]:
        with Session(self.engine) as s:
            q = select(InboxRow)
            if status:
                q = q.where(InboxRow.status == status)
            return list(s.exec(q.order_by(InboxRow.id.desc()).limit(limit)).all())  # type: ignore[union-attr]

    def referrals_awaiting_arrival(self, patient: str) -> list[str]:
        """Loops of this patient (ID^^^issuer) that are booked and not yet arrived."""
        with Session(self.engine) as s:
            rids = s.exec(select(IdentifierRow.referral_id).where(IdentifierRow.kind == "patient", IdentifierRow.value == patient)).all()
            if not rids:
                return []
            rows = s.exec(select(LoopRow.referral_id).where(LoopRow.referral_id.in_(rids), LoopRow.stage.in_(["ordered", "scheduled"]))).all()  # type: ignore[attr-defined]
            return sorted(set(rows))

    def open_referrals_of_patient(self, patient: str) -> list[str]:
        """Loops of this patient (ID^^^issuer) not closed yet (a closed loop's workflow may be gone)."""
        with Session(self.engine) as s:
            rids = s.exec(select(IdentifierRow.referral_id).where(IdentifierRow.kind == "patient", IdentifierRow.value == patient)).all()
            if not rids:
                return []
            rows = s.exec(select(LoopRow.referral_id).where(LoopRow.referral_id.in_(rids), LoopRow.stage != "closed")).all()  # type: ignore[attr-defined]
            return sorted(set(rows))
