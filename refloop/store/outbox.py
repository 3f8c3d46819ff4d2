"""The outbox (status messages to requesters) and the delivery-attempt log.

Outbox rows are written by the workflow's persist step in the same transaction as the loop;
the relay sends them per referral in `seq` order. Several relays may run (one per worker):
a relay claims only the head row of a referral's queue, with a compare-and-set on `attempts`
and a lease, so two relays never send the same referral's messages out of order.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, exists, select

from refloop.store.tables import DeliveryAttemptRow, OutboxRow

_OPEN = ("pending", "sending")


def utc(at: datetime | None = None) -> datetime:
    """Times are stored aware (UTC); a value read back without a zone is UTC."""
    at = at or datetime.now(timezone.utc)
    return at.astimezone(timezone.utc) if at.tzinfo else at.replace(tzinfo=timezone.utc)


class OutboxStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def claim_heads(self, lease: timedelta, limit: int = 50, now: datetime | None = None) -> list[OutboxRow]:
        """Claim the first unsent row of each referral's queue that is due (or whose lease expired)."""
        now = utc(now)
        earlier = aliased(OutboxRow)
        with Session(self.engine, expire_on_commit=False) as s:
            heads = s.exec(
                select(OutboxRow)
                .where(OutboxRow.status.in_(_OPEN))  # type: ignore[attr-defined]
                .where(
                    ~exists().where(
                        earlier.referral_id == OutboxRow.referral_id,
                        earlier.topic == OutboxRow.topic,
                        earlier.status.in_(_OPEN),  # type: ignore[attr-defined]
                        earlier.seq < OutboxRow.seq,
                    )
                )
                .order_by(OutboxRow.id)  # type: ignore[arg-type]
                .limit(limit * 4)
            ).all()
            claimed: list[OutboxRow] = []
            for row in heads:
                due = row.status == "pending" and (row.next_attempt_at is None or utc(row.next_attempt_at) <= now)
                expired = row.status == "sending" and (row.lease_until is None or utc(row.lease_until) <= now)
                if not (due or expired):
                    continue
                result = s.exec(  # type: ignore[call-overload]
                    update(OutboxRow)
                    .where(OutboxRow.id == row.id, OutboxRow.attempts == row.attempts, OutboxRow.status.in_(_OPEN))  # type: ignore[attr-defined]
                    .values(status="sending", attempts=row.attempts + 1, lease_until=now + lease)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:
                    claimed.append(row)
                if len(claimed) >= limit:
                    break
            s.commit()
            for row in claimed:  # detached copies that say what this relay now holds
                s.expunge(row)
                row.status, row.attempts, row.lease_until = "sending", row.attempts + 1, now + lease
            return claimed

    def _finish(self, row_id: int, attempts: int, **values) -> None:
        # Only the holder of this claim (same attempt count) may finish the row.
        with Session(self.engine) as s:
            s.exec(update(OutboxRow).where(OutboxRow.id == row_id, OutboxRow.attempts == attempts).values(lease_until=None, **values))  # type: ignore[call-overload]
            s.commit()

    def mark_sent(self, row: OutboxRow) -> None:
        self._finish(row.id, row.attempts, status="sent", sent_at=utc(), last_error="")  # type: ignore[arg-type]

    def mark_retry(self, row: OutboxRow, error: str, at: datetime) -> None:
        self._finish(row.id, row.attempts, status="pending", last_error=error[:500], next_attempt_at=utc(at))  # type: ignore[arg-type]

    def mark_failed(self, row: OutboxRow, error: str) -> None:
        self._finish(row.id, row.attempts, status="failed", last_error=error[:500])  # type: ignore[arg-type]

    def mark_skipped(self, row: OutboxRow, reason: str) -> None:
        self._finish(row.id, row.attempts, status="skipped", last_error=reason[:500])  # type: ignore[arg-type]

    def rows(self, referral_id: str) -> list[OutboxRow]:
        with Session(self.engine) as s:
            return list(s.exec(select(OutboxRow).where(OutboxRow.referral_id == referral_id).order_by(OutboxRow.topic, OutboxRow.seq)).all())  # type: ignore[arg-type]


class DeliveryLog:
    """Every delivery attempt, successful or not, as the delivery activity saw it."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def record(self, **values) -> None:
        with Session(self.engine) as s:
            s.add(DeliveryAttemptRow(at=datetime.now(timezone.utc), **values))
            s.commit()

    def attempts(self, referral_id: str) -> list[DeliveryAttemptRow]:
        with Session(self.engine) as s:
            return list(s.exec(select(DeliveryAttemptRow).where(DeliveryAttemptRow.referral_id == referral_id).order_by(DeliveryAttemptRow.id)).all())  # type: ignore[arg-type]
