"""The reporting worklist: archived loops, most urgent first, over HTTP (JSON and FHIR R4 Tasks),
in the CLI, and pushed once per loop to a "ready to read" webhook."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from fhir.resources.R4B.bundle import Bundle

from refloop.domain import events as ev
from refloop.domain.policy import Policy
from refloop.gateways.http.server import EXTRA_ROUTERS, load_routers
from refloop.gateways.worklist import notify_ready, reading_worklist
from refloop.store.imaging import ImagingStore
from tests.conftest import unique
from tests.http_support import running_api
from tests.imaging import hand_over, imaging_env, imaging_order, persisted
from tests.receivers import FhirReceiver

ROOT = Path(__file__).resolve().parents[1]


async def archive(env, rid: str, acc: str, priority: str, archived_ago: timedelta, *, then: list | None = None, code="CTHEAD", display="CT head") -> None:
    now = datetime.now(timezone.utc)
    order, booking = imaging_order(rid, accession=acc, priority=priority, code=code, display=display)
    study = ev.StudyArchived(event_id=f"{rid}-study", occurred_at=now - archived_ago, accession_number=acc, study_instance_uid=booking.identifiers.study_instance_uid, instance_count=12)
    await hand_over(env.intake, rid, order, booking, study, *(then or []))


async def seven_loops(env, p: str) -> None:
    """Five on the reporting worklist (one with a preliminary report), two not."""
    now = datetime.now(timezone.utc)
    await archive(env, f"{p}-a", f"{p}-A", "routine", timedelta(hours=3))
    await archive(env, f"{p}-b", f"{p}-B", "stat", timedelta(minutes=10), code="CTCHEST", display="CT chest")
    await archive(env, f"{p}-c", f"{p}-C", "urgent", timedelta(minutes=30))
    await archive(env, f"{p}-d", f"{p}-D", "routine", timedelta(hours=1))
    prelim = ev.ReportIssued(event_id=f"{p}-e-p", occurred_at=now, status="preliminary", conclusion="draft")
    await archive(env, f"{p}-e", f"{p}-E", "routine", timedelta(hours=2), then=[prelim])
    final = ev.ReportIssued(event_id=f"{p}-f-f", occurred_at=now, status="final", conclusion="done")
    await archive(env, f"{p}-f", f"{p}-F", "stat", timedelta(hours=5), then=[final])
    order, booking = imaging_order(f"{p}-g", accession=f"{p}-G", priority="stat")
    await hand_over(env.intake, f"{p}-g", order, booking)
    for suffix, stage in (("a", "archived"), ("b", "archived"), ("c", "archived"), ("d", "archived"), ("e", "reported_preliminary"), ("f", "reported_final"), ("g", "scheduled")):
        assert await persisted(env.store, f"{p}-{suffix}", lambda lp, s=stage: lp.stage.value == s), suffix


EXPECTED = ["b", "c", "a", "e", "d"]  # stat, urgent, then routine by report deadline


async def test_reporting_worklist_in_priority_then_deadline_order_over_http(client, task_queue, store):
    p = unique("RW")
    async with imaging_env(client, task_queue, store) as env:
        await seven_loops(env, p)
    items = reading_worklist(ImagingStore(store.engine), Policy())
    assert [i.referral_id for i in items] == [f"{p}-{x}" for x in EXPECTED]
    # Through the HTTP gateway, mounted as `refloop dev` mounts it, behind its tokens.
    async with running_api(client, store, task_queue, routers=load_routers(EXTRA_ROUTERS)) as api:
        async with api.client() as anonymous:
            assert (await anonymous.get("/worklist/reporting")).status_code == 401
        async with api.client("reporting") as http:
            listed = (await http.get("/worklist/reporting")).json()
            fhir = await http.get("/worklist/reporting/fhir")
    assert [i["accession_number"] for i in listed] == [f"{p}-{x.upper()}" for x in EXPECTED]
    stat = listed[0]
    assert (stat["priority"], stat["modality"], stat["procedure_code"], stat["procedure_display"]) == ("stat", "CT", "CTCHEST", "CT chest")
    assert stat["study_instance_uid"] and 590 <= stat["waiting_seconds"] < 3600 and not stat["overdue"]
    assert [i["stage"] for i in listed].count("reported_preliminary") == 1
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate_json(fhir.text)
    tasks = [e.resource for e in bundle.entry]
    assert bundle.type == "searchset" and bundle.total == 5
    assert [t.identifier[0].value for t in tasks] == [f"{p}-{x}" for x in EXPECTED]
    assert [t.priority for t in tasks] == ["stat", "urgent", "routine", "routine", "routine"]
    assert [t.status for t in tasks] == ["ready", "ready", "ready", "in-progress", "ready"]
    assert tasks[0].focus.identifier.value == f"urn:oid:{stat['study_instance_uid']}"
    assert tasks[0].basedOn[0].identifier.value == f"{p}-B"


async def test_cli_prints_the_reporting_worklist(client, task_queue, store, tmp_path):
    p = unique("CLI")
    async with imaging_env(client, task_queue, store) as env:
        await seven_loops(env, p)
    env_vars = {**os.environ, "DATABASE_URL": str(store.engine.url), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "refloop.cli.main", "worklist"]
    as_json = await asyncio.to_thread(subprocess.run, [*cmd, "--json"], capture_output=True, text=True, env=env_vars, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    assert [i["referral_id"] for i in json.loads(as_json.stdout)] == [f"{p}-{x}" for x in EXPECTED]
    table = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, env={**env_vars, "COLUMNS": "250"}, timeout=60)
    assert table.returncode == 0, table.stderr
    positions = [table.stdout.index(f"{p}-{x.upper()}") for x in EXPECTED]
    assert positions == sorted(positions) and "reporting worklist (5)" in table.stdout
    fhir = await asyncio.to_thread(subprocess.run, [*cmd, "--fhir"], capture_output=True, text=True, env=env_vars, timeout=60)
    assert Bundle.model_validate_json(fhir.stdout).total == 5


async def test_ready_to_read_webhook_fires_once_per_loop(client, task_queue, store):
    p = unique("WH")
    async with imaging_env(client, task_queue, store) as env, FhirReceiver() as hook:
        await seven_loops(env, p)
        imaging = ImagingStore(store.engine)
        async with httpx.AsyncClient() as http:
            assert await notify_ready(imaging, Policy(), http, hook.webhook) == 5
            assert await notify_ready(imaging, Policy(), http, hook.webhook) == 0
            await archive(env, f"{p}-h", f"{p}-H", "urgent", timedelta(minutes=1))
            assert await persisted(store, f"{p}-h", lambda lp: lp.stage.value == "archived")
            assert await notify_ready(imaging, Policy(), http, hook.webhook) == 1
        bodies = hook.posts
        assert [b["referral_id"] for b in bodies] == [f"{p}-{x}" for x in EXPECTED] + [f"{p}-h"]
        assert all(b["event"] == "study_ready_to_read" and b["study_instance_uid"] for b in bodies)
