"""Sweep digests: what each scheduled escalation sweep found, for `refloop stale` and audits."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from refloop.store.tables import SweepDigestRow


class DigestStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def record(self, row: SweepDigestRow) -> int:
        """Insert once per sweep run (a retried activity finds its own row)."""
        with Session(self.engine) as s:
            existing = s.exec(select(SweepDigestRow).where(SweepDigestRow.sweep_id == row.sweep_id)).first()
            if existing:
                return existing.id  # type: ignore[return-value]
            s.add(row)
            s.commit()
            s.refresh(row)
            return row.id  # type: ignore[return-value]

    def mark_posted(self, sweep_id: str, posted: str) -> None:
        with Session(self.engine) as s:
            row = s.exec(select(SweepDigestRow).where(SweepDigestRow.sweep_id == sweep_id)).first()
            if row:
                row.posted = posted
                s.add(row)
                s.commit()

    def latest(self, task_queue: str = "") -> SweepDigestRow | None:
        with Session(self.engine) as s:
            q = select(SweepDigestRow)
            if task_queue:
                q = q.where(SweepDigestRow.task_queue == task_queue)
            return s.exec(q.order_by(SweepDigestRow.swept_at.desc(), SweepDigestRow.id.desc()).limit(1)).first()  # type: ignore[attr-defined,union-attr]
