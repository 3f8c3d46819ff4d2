"""Archive watcher: follows a real Orthanc's change feed (`/changes`, StableStudy) and tells each
study's loop that its images are archived, with the archive's instance count.

A study maps to its loop by StudyInstanceUID and AccessionNumber (the Intake correlates;
a study for an order we do not know yet is parked until the order comes). The last change
handled is kept in SQL, so the watcher resumes where it stopped, across its own restarts and
Orthanc's; a change is marked handled only once the Intake has it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import httpx
import structlog

from refloop.config import Settings
from refloop.domain import events as ev
from refloop.domain.referral import PatientId
from refloop.gateways.intake import Inbound, Intake, Keys, Result
from refloop.store.imaging import ImagingStore

log = structlog.get_logger()

PAGE = 100


class ArchiveWatcher:
    def __init__(self, base_url: str, intake: Intake, http: httpx.AsyncClient | None = None, poll_seconds: float = 2.0):
        self.base_url = base_url.rstrip("/")
        self.intake = intake
        self.imaging = ImagingStore(intake.store.engine)
        self.http = http or httpx.AsyncClient(timeout=10)
        self.poll_seconds = poll_seconds
        self.cursor_name = f"orthanc-changes:{self.base_url}"

    @property
    def cursor(self) -> int:
        return int(self.imaging.get_cursor(self.cursor_name, "0"))

    async def _set_cursor(self, seq: int) -> None:
        await asyncio.to_thread(self.imaging.set_cursor, self.cursor_name, str(seq))

    async def poll_once(self) -> list[Result]:
        """Handle every change after the cursor. Raises httpx errors when Orthanc is away."""
        results: list[Result] = []
        while True:
            since = await asyncio.to_thread(lambda: self.cursor)
            resp = await self.http.get(f"{self.base_url}/changes", params={"since": since, "limit": PAGE})
            resp.raise_for_status()
            page = resp.json()
            if page["Last"] < since and not page["Changes"]:
                # Orthanc's database was replaced: its sequence started again.
                log.warning("orthanc_feed_reset", cursor=since, last=page["Last"])
                await self._set_cursor(0)
                continue
            for change in page["Changes"]:
                if change["ChangeType"] == "StableStudy":
                    result = await self._archived(change)
                    if result is not None:
                        results.append(result)
                await self._set_cursor(change["Seq"])
            if page["Done"] or not page["Changes"]:
                return results

    async def _archived(self, change: dict) -> Result | None:
        study_id = change["ID"]
        resp = await self.http.get(f"{self.base_url}/studies/{study_id}")
        if resp.status_code == 404:
            log.info("orthanc_study_gone", orthanc_id=study_id, seq=change["Seq"])
            return None
        resp.raise_for_status()
        study = resp.json()
        stats = await self.http.get(f"{self.base_url}/studies/{study_id}/statistics")
        stats.raise_for_status()
        tags = study.get("MainDicomTags", {})
        patient_tags = study.get("PatientMainDicomTags", {})
        uid, accession = tags.get("StudyInstanceUID", ""), tags.get("AccessionNumber", "")
        instances = int(stats.json().get("CountInstances", 0))
        pid = patient_tags.get("PatientID", "")
        event = ev.StudyArchived(
            event_id=f"orthanc:{study_id}:{change['Seq']}",  # a study stable again after more images is news
            occurred_at=datetime.now(timezone.utc),
            source="orthanc",
            study_instance_uid=uid,
            accession_number=accession,
            instance_count=instances,
        )
        keys = Keys(
            study_instance_uid=uid,
            accession_number=accession,
            patient=PatientId(value=pid, issuer=patient_tags.get("IssuerOfPatientID", "")) if pid else None,
        )
        inbound = Inbound("orthanc", self.base_url, f"{study_id}:{change['Seq']}", "StableStudy", json.dumps(study), event, keys)
        result = await self.intake.receive(inbound)
        log.info("study_archived", orthanc_id=study_id, seq=change["Seq"], instances=instances, status=result.status.value, referral_id=result.referral_id)
        return result

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop`; an unreachable Orthanc is waited for, never fatal."""
        down = False
        while not stop.is_set():
            try:
                await self.poll_once()
                if down:
                    log.info("archive_watch_recovered", url=self.base_url, cursor=self.cursor)
                down = False
            except Exception as err:  # Orthanc, Temporal or SQL away: the cursor waits, we retry
                if not down:
                    log.warning("archive_watch_failing", url=self.base_url, error=type(err).__name__)
                down = True
            try:
                await asyncio.wait_for(stop.wait(), self.poll_seconds)
            except asyncio.TimeoutError:
                pass


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """`refloop dev` service: runs only when REFLOOP_ORTHANC_URL is set."""
    if not settings.orthanc_url:
        await stop.wait()
        return
    from refloop.store.db import make_engine
    from refloop.store.repo import Store
    from refloop.temporal import connect

    client = await connect(settings.temporal_address, settings.namespace)
    intake = Intake(client, Store(make_engine(settings.db_url)), settings.task_queue, settings.policy())
    async with httpx.AsyncClient(timeout=10) as http:
        await ArchiveWatcher(settings.orthanc_url, intake, http, settings.orthanc_poll_seconds).run(stop)
