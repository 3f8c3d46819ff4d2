"""The outbox claims, delivery log and sweep digests on both SQL back ends (SQLite and a fresh
PostgreSQL database), including two relays racing for the same rows."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text
from sqlmodel import Session

from refloop.store.db import make_engine
from refloop.store.digests import DigestStore
from refloop.store.outbox import DeliveryLog, OutboxStore
from refloop.store.tables import OutboxRow, SweepDigestRow
from tests.conftest import PG_URL

LEASE = timedelta(seconds=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        yield make_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
        return
    name = f"refloop_closure_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as err:  # pragma: no cover - PostgreSQL is part of the test machine
        pytest.fail(f"PostgreSQL at {PG_URL} is needed: {err}")
    engine = make_engine(PG_URL.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _add(engine, referral_id: str, seq: int) -> None:
    with Session(engine) as s:
        s.add(OutboxRow(referral_id=referral_id, topic="milestone", seq=seq, created_at=datetime.now(timezone.utc), payload_json=json.dumps({"seq": seq})))
        s.commit()


def test_heads_only_in_order_with_backoff(engine):
    out = OutboxStore(engine)
    for seq in (1, 2, 3):
        _add(engine, "A", seq)
    for seq in (1, 2):
        _add(engine, "B", seq)
    first = out.claim_heads(LEASE)
    assert sorted((r.referral_id, r.seq) for r in first) == [("A", 1), ("B", 1)]
    assert out.claim_heads(LEASE) == []  # both heads are held; nothing behind them may overtake
    a1, b1 = sorted(first, key=lambda r: r.referral_id)
    out.mark_sent(a1)
    out.mark_retry(b1, "HTTP 503", datetime.now(timezone.utc) + timedelta(hours=1))
    assert [(r.referral_id, r.seq) for r in out.claim_heads(LEASE)] == [("A", 2)]
    # A retry that is due, and a lease that expired, are taken (again).
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    again = out.claim_heads(LEASE, now=later)
    assert sorted((r.referral_id, r.seq, r.attempts) for r in again) == [("A", 2, 2), ("B", 1, 2)]
    # The first holder of A2 lost its lease: its late answer must not overwrite the new holder's.
    a2 = next(r for r in again if r.referral_id == "A")
    out.mark_failed(a2.model_copy(update={"attempts": 1}), "late answer")
    assert {(r.seq, r.status) for r in out.rows("A")} == {(1, "sent"), (2, "sending"), (3, "pending")}


def test_two_relays_never_claim_the_same_row(engine):
    out = OutboxStore(engine)
    for i in range(40):
        _add(engine, f"R{i}", 1)
    with ThreadPoolExecutor(4) as pool:
        claims = list(pool.map(lambda _: out.claim_heads(LEASE, limit=40), range(4)))
    ids = [r.id for batch in claims for r in batch]
    assert len(ids) == len(set(ids)) == 40


def test_delivery_log_and_digests(engine):
    log = DeliveryLog(engine)
    log.record(referral_id="A", what="result", version=1, attempt=1, channel="fhir", endpoint="http://x", status_code=500, ok=False, error="HTTP 500")
    log.record(referral_id="A", what="result", version=1, attempt=2, channel="fhir", endpoint="http://x", status_code=200, ok=True, error="")
    assert [(a.attempt, a.ok) for a in log.attempts("A")] == [(1, False), (2, True)]
    digests = DigestStore(engine)
    row = dict(sweep_id="s/1", swept_at=datetime.now(timezone.utc), task_queue="q", stale=2, digest_json="{}")
    first = digests.record(SweepDigestRow(**row))
    assert digests.record(SweepDigestRow(**row)) == first  # a retried activity writes nothing new
    digests.mark_posted("s/1", "webhook")
    latest = digests.latest("q")
    assert latest is not None and latest.posted == "webhook" and latest.stale == 2
