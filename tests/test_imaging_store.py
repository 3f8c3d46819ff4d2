"""The imaging store on SQLite and on PostgreSQL: worklist reads, MPPS state, cursors."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from refloop.domain import machine
from refloop.domain.policy import Policy
from refloop.store.imaging import COMPLETED, DISCONTINUED, IN_PROGRESS, ImagingStore, MppsRow
from refloop.store.repo import Store
from tests.imaging import imaging_order
from tests.test_outbox_store import engine  # noqa: F401 (fixture: SQLite, and PostgreSQL in a database of its own)

NOW = datetime(2026, 5, 1, 9, 0, tzinfo=timezone.utc)


def persist(store: Store, rid: str, modality: str = "CT", accession: str = "") -> None:
    loop = machine.new_loop(rid)
    for e in imaging_order(rid, accession=accession or f"ACC-{rid}", modality=modality, start=NOW):
        loop = machine.apply(loop, e, NOW, Policy(no_show_closes=False)).loop
    store.persist_loop(loop, timeline_from=0, escalations_from=0, milestones=[], stage_deadline=None, history_length=1)


def mpps(uid: str, referral_id: str, status: str) -> MppsRow:
    return MppsRow(sop_instance_uid=uid, status=status, referral_id=referral_id, created_at=NOW, updated_at=NOW)


def test_imaging_store(engine):
    store, imaging = Store(engine), ImagingStore(engine)
    for rid, modality in (("A", "CT"), ("B", "CT"), ("C", "MR"), ("D", "CT")):
        persist(store, rid, modality)
    ids = lambda loops: sorted(lp.referral.referral_id for lp in loops)  # noqa: E731
    assert ids(imaging.loops_in_stages(["scheduled"])) == ["A", "B", "C", "D"]
    assert ids(imaging.loops_in_stages(["scheduled"], modality="CT")) == ["A", "B", "D"]
    assert ids(imaging.loops_in_stages(["scheduled"], accession_number="ACC-C")) == ["C"]
    imaging.save_mpps(mpps("1.1", "A", IN_PROGRESS))
    imaging.save_mpps(mpps("1.2", "B", COMPLETED))
    imaging.save_mpps(mpps("1.3", "D", DISCONTINUED))  # e.g. wrong worklist entry: back on the list
    assert ids(imaging.loops_in_stages(["scheduled"], exclude_started=True)) == ["C", "D"]
    assert imaging.park_mpps_set("9.9", "CT1", {"00400252": {"vr": "CS", "Value": ["IN PROGRESS"]}}) == 1
    assert imaging.park_mpps_set("9.9", "CT1", {"00400252": {"vr": "CS", "Value": ["COMPLETED"]}}) == 2
    orphan = imaging.get_mpps("9.9")
    assert orphan.status == "" and len(json.loads(orphan.pending_sets_json)) == 2
    assert [r.sop_instance_uid for r in imaging.mpps_for_referral("B")] == ["1.2"]
    assert imaging.get_cursor("feed", "0") == "0"
    imaging.set_cursor("feed", "41")
    imaging.set_cursor("feed", "42")
    assert imaging.get_cursor("feed") == "42"
    assert imaging.reading_notified(["A", "B"]) == set()
    imaging.mark_reading_notified("A", 204)
    assert imaging.reading_notified(["A", "B"]) == {"A"}
