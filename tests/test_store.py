"""The SQL store: the same tests on SQLite and on PostgreSQL (the real server on this machine)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text

from refloop.domain import machine as m
from refloop.domain.policy import Policy
from refloop.domain.referral import PatientId
from refloop.store.db import make_engine
from refloop.store.repo import InboxStore, Store
from tests.conftest import PG_URL
from tests.factories import PATIENT, T0, happy_path

P = Policy()


@pytest.fixture(scope="module")
def pg_database():
    """A throwaway database on the local PostgreSQL server, dropped afterwards."""
    name = f"refloop_test_{uuid.uuid4().hex[:8]}"
    admin_url = PG_URL.rsplit("/", 1)[0] + "/postgres"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {admin_url} is required for these tests: {err}")
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    else:
        engine = make_engine(request.getfixturevalue("pg_database"))
    yield Store(engine)
    engine.dispose()


def loop_after(rid: str, n: int):
    loop = m.new_loop(rid)
    for e in happy_path(rid)[:n]:
        loop = m.apply(loop, e, e.occurred_at, P).loop
    return loop


def persist(store: Store, loop, history_length: int, **kw):
    return store.persist_loop(
        loop,
        timeline_from=kw.get("timeline_from", 0),
        escalations_from=0,
        milestones=kw.get("milestones", []),
        stage_deadline=T0 + timedelta(hours=1),
        history_length=history_length,
    )


def test_persist_is_idempotent_and_indexes_identifiers(db):
    rid = f"PO-{uuid.uuid4().hex[:8]}"
    loop = loop_after(rid, 3)
    milestones = [(1, {"milestone": "accepted"}), (2, {"milestone": "booked"})]
    for _ in range(3):  # a retried activity writes nothing twice
        persist(db, loop, 10, milestones=milestones)
    assert db.get_loop(rid) == loop
    assert [t.kind for t in db.timeline(rid)] == ["order_placed", "scheduled", "arrived"]
    acc = loop.referral.identifiers.accession_number
    assert db.find_referrals("accession", acc) == [rid]
    assert rid in db.find_referrals("patient", f"{PATIENT.value}^^^{PATIENT.issuer}")
    assert db.find_referrals("patient", f"{PATIENT.value}^^^ELSEWHERE") == []
    assert db.resolve(acc) == rid and db.resolve(rid) == rid


def test_an_older_write_never_overwrites_a_newer_one(db):
    rid = f"PO-{uuid.uuid4().hex[:8]}"
    newer, older = loop_after(rid, 5), loop_after(rid, 2)
    persist(db, newer, 30)
    persist(db, older, 12)
    assert db.get_loop(rid).stage == newer.stage


def test_merge_repoints_the_patient_index(db):
    rid = f"PO-{uuid.uuid4().hex[:8]}"
    loop = loop_after(rid, 2)
    persist(db, loop, 5)
    new = PatientId(value="MERGED", issuer=PATIENT.issuer)
    from refloop.domain import events as ev

    loop = m.apply(loop, ev.PatientMerged(event_id="a40", occurred_at=T0, old=PATIENT, new=new), T0, P).loop
    persist(db, loop, 9, timeline_from=2)
    assert db.find_referrals("patient", f"MERGED^^^{PATIENT.issuer}") == [rid]
    assert rid not in db.find_referrals("patient", f"{PATIENT.value}^^^{PATIENT.issuer}")


def test_parked_message_is_released_to_the_loop_that_claims_it(db):
    rid = f"PO-{uuid.uuid4().hex[:8]}"
    inbox = InboxStore(db.engine)
    loop = loop_after(rid, 2)
    acc = loop.referral.identifiers.accession_number
    report = happy_path(rid)[-1]
    row, new = inbox.claim("hl7", "RIS", f"{rid}-1", "ORU^R01", "MSH|...")
    assert new
    inbox.park(row.id, report.model_dump_json(), report.kind, report.event_id, [("accession", acc)])
    again, new = inbox.claim("hl7", "RIS", f"{rid}-1", "ORU^R01", "MSH|...")
    assert not new and again.id == row.id  # the sender's retry is the same message
    released = persist(db, loop, 5)
    assert [json.loads(json.dumps(r))["event_id"] for r in released] == [report.event_id]
    from refloop.domain.events import parse_event

    applied = m.apply(loop, parse_event(released[0]), T0, P).loop
    assert persist(db, applied, 7, timeline_from=2) == []  # applied: not released again
    assert [r.status for r in inbox.list(status="released") if r.id == row.id] == ["released"]


def test_outbox_rows_are_written_once(db):
    from sqlmodel import Session, select

    from refloop.store.tables import OutboxRow

    rid = f"PO-{uuid.uuid4().hex[:8]}"
    loop = loop_after(rid, 1)
    for _ in range(2):
        persist(db, loop, 4, milestones=[(1, {"milestone": "accepted"})])
    with Session(db.engine) as s:
        rows = s.exec(select(OutboxRow).where(OutboxRow.referral_id == rid)).all()
    assert [(r.seq, r.status, json.loads(r.payload_json)["milestone"]) for r in rows] == [(1, "pending", "accepted")]
