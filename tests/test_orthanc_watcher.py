"""The archive watcher following a real Orthanc: DCMTK storescu sends generated images, Orthanc
reports the stable study on /changes, the loop learns its images are archived."""

from __future__ import annotations

import asyncio

import httpx
from pydicom.uid import generate_uid
from sqlmodel import Session, select

from refloop.gateways.intake import Status
from refloop.gateways.orthanc import ArchiveWatcher
from refloop.store.imaging import ImagingStore
from refloop.store.tables import InboxRow
from tests.conftest import unique
from tests.helpers import wait_for
from tests.imaging import imaging_env, mpps_final, orthanc, started_for, watching, write_study  # noqa: F401 (fixture)



def archived_messages(store) -> list[InboxRow]:
    with Session(store.engine) as s:
        return list(s.exec(select(InboxRow).where(InboxRow.protocol == "orthanc").order_by(InboxRow.id)).all())


async def test_archived_study_reconciles_with_mpps_and_missing_images_escalate(client, task_queue, store, orthanc, tmp_path):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        _, booking = await env.book(rid, accession=acc)
        study_uid = booking.identifiers.study_instance_uid
        mpps = generate_uid()
        status, _ = await asyncio.to_thread(env.modality.create, started_for(booking), mpps)
        assert status.Status == 0
        status, _ = await asyncio.to_thread(env.modality.set, mpps, mpps_final("COMPLETED", [5]))
        assert status.Status == 0
        await wait_for(client, rid, lambda lp: lp.stage.value == "acquired")
        async with watching(orthanc, env.intake):
            await orthanc.store(write_study(tmp_path / "a", study_uid=study_uid, accession=acc, count=3))
            loop = await wait_for(client, rid, lambda lp: lp.stage.value == "archived", timeout=30)
            assert (loop.stage.value, loop.archived_instances) == ("archived", 3)
            missing = [a for a in loop.anomalies if a.code == "images_missing"]
            assert len(missing) == 1 and "3 of 5" in missing[0].detail and not missing[0].resolved
            assert [(e.level, e.reason) for e in loop.escalations] == [(2, missing[0].detail)]
            # The two missing images arrive: the study is stable again, now complete.
            await orthanc.store(write_study(tmp_path / "b", study_uid=study_uid, accession=acc, count=2))
            loop = await wait_for(client, rid, lambda lp: lp.archived_instances == 5, timeout=30)
            assert loop.archived_instances == 5 and not loop.open_anomalies
        assert [r.status for r in archived_messages(store)] == ["accepted", "accepted"]


async def test_study_stored_before_its_order_is_parked_then_released(client, task_queue, store, orthanc, tmp_path):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        async with watching(orthanc, env.intake):
            await orthanc.store(write_study(tmp_path / "s", study_uid=generate_uid(), accession=acc, count=4))
            for _ in range(150):
                rows = archived_messages(store)
                if rows and rows[0].status != "received":  # claimed, then parked
                    break
                await asyncio.sleep(0.2)
            assert [r.status for r in rows] == [Status.PARKED.value]
            await env.book(rid, accession=acc, expect="archived")
            loop = await wait_for(client, rid, lambda lp: lp.archived_instances == 4)
            assert (loop.stage.value, loop.archived_instances) == ("archived", 4)
            assert any(t.kind == "study_archived" and t.applied for t in loop.timeline)


async def test_watcher_survives_orthanc_restarts_and_resumes_from_its_cursor(client, task_queue, store, orthanc, tmp_path):
    p = unique("R")
    async with imaging_env(client, task_queue, store) as env:
        _, first = await env.book(f"{p}-1", accession=f"{p}-A1")
        _, second = await env.book(f"{p}-2", accession=f"{p}-A2")
        async with watching(orthanc, env.intake) as watcher:
            await orthanc.store(write_study(tmp_path / "1", study_uid=first.identifiers.study_instance_uid, accession=f"{p}-A1", count=2))
            await wait_for(client, f"{p}-1", lambda lp: lp.stage.value == "archived", timeout=30)
            await asyncio.to_thread(orthanc.stop)
            await asyncio.sleep(1.0)  # the watcher polls a dead Orthanc meanwhile, and lives
            assert not watcher.task.done()
            await asyncio.to_thread(orthanc.start)  # same storage: its change sequence goes on
            await orthanc.store(write_study(tmp_path / "2", study_uid=second.identifiers.study_instance_uid, accession=f"{p}-A2", count=1))
            loop = await wait_for(client, f"{p}-2", lambda lp: lp.stage.value == "archived", timeout=30)
            assert loop.archived_instances == 1
        handled = archived_messages(store)
        assert [r.status for r in handled] == ["accepted", "accepted"]  # each stable study once
        # Our own restart: a new watcher on the same database starts after the last change seen.
        fresh = ArchiveWatcher(orthanc.url, env.intake)
        cursor = fresh.cursor
        last = httpx.get(f"{orthanc.url}/changes", params={"last": ""}).json()["Last"]
        assert cursor == last > 0
        assert await fresh.poll_once() == []
        assert len(archived_messages(store)) == 2


async def test_a_replaced_orthanc_database_resets_the_cursor(client, task_queue, store, orthanc, tmp_path):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        _, booking = await env.book(rid, accession=acc)
        watcher = ArchiveWatcher(orthanc.url, env.intake)
        ImagingStore(store.engine).set_cursor(watcher.cursor_name, "5000")  # from an earlier database
        await orthanc.store(write_study(tmp_path / "x", study_uid=booking.identifiers.study_instance_uid, accession=acc, count=2))
        results = []
        for _ in range(100):
            results = await watcher.poll_once()
            if results:
                break
            await asyncio.sleep(0.2)
        assert [r.status for r in results] == [Status.ACCEPTED] and results[0].referral_id == rid
        assert 0 < watcher.cursor < 5000
