"""`refloop dev`'s imaging services as registered in DEV_SERVICES, run by run_stack from Settings:
the DICOM listener, the Orthanc watcher and the ready-to-read webhook, beside the worker."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

from refloop.cli.dev import DEV_SERVICES, run_stack
from refloop.config import Settings
from refloop.gateways.intake import Intake
from refloop.store.db import make_engine
from refloop.store.repo import Store
from tests.conftest import unique
from tests.helpers import wait_for
from tests.imaging import AET, Modality, findscu, free_port, hand_over, imaging_order, mpps_final, orthanc, started_for, write_study  # noqa: F401 (fixture)
from tests.receivers import FhirReceiver

IMAGING = [s for s in DEV_SERVICES if s.startswith(("refloop.gateways.dicom", "refloop.gateways.orthanc", "refloop.gateways.worklist"))]



async def listening(port: int, timeout: float = 20) -> bool:
    for _ in range(int(timeout / 0.1)):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            await asyncio.sleep(0.1)
    return False


async def test_dev_stack_serves_worklist_mpps_archive_and_webhook(client, task_queue, tmp_path: Path, orthanc):
    assert len(IMAGING) == 3, DEV_SERVICES
    db_url = f"sqlite:///{tmp_path / 'refloop.db'}"
    async with FhirReceiver() as hook:
        settings = Settings(
            data_dir=tmp_path,
            database_url=db_url,
            temporal_address=client.service_client.config.target_host,
            task_queue=task_queue,
            dicom_port=free_port(),
            dicom_ae_title=AET,
            orthanc_url=orthanc.url,
            orthanc_poll_seconds=0.3,
            reading_webhook=hook.webhook,
        )
        stop = asyncio.Event()
        stack = asyncio.create_task(run_stack(settings, stop, IMAGING))
        try:
            assert await listening(settings.dicom_port), "DICOM listener did not come up"
            store = Store(make_engine(db_url))
            rid, acc = unique(), unique("ACC")
            order, booking = imaging_order(rid, accession=acc)
            await hand_over(Intake(client, store, task_queue), rid, order, booking)
            for _ in range(100):
                found = await findscu(settings.dicom_port, AET, keys=[f"AccessionNumber={acc}", "PatientID"])
                if found:
                    break
                await asyncio.sleep(0.2)
            assert [r.PatientID for r in found] == ["PID_1"]
            modality = Modality(settings.dicom_port)
            status, uid = await asyncio.to_thread(modality.create, started_for(booking), None)
            assert status.Status == 0
            status, _ = await asyncio.to_thread(modality.set, uid, mpps_final("COMPLETED", [2]))
            assert status.Status == 0
            await orthanc.store(write_study(tmp_path / "s", study_uid=booking.identifiers.study_instance_uid, accession=acc, count=2))
            loop = await wait_for(client, rid, lambda lp: lp.stage.value == "archived", timeout=30)
            assert loop.archived_instances == 2
            for _ in range(150):
                if hook.posts:
                    break
                await asyncio.sleep(0.1)
            assert [p["accession_number"] for p in hook.posts] == [acc]
        finally:
            stop.set()
            await asyncio.wait_for(stack, 30)
            running = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):  # the worker installed handlers for `stop`
                running.remove_signal_handler(sig)
