"""The reporting worklist: loops whose study is archived and not yet finally reported, most
urgent first (priority, then report deadline). Served as JSON and as a FHIR R4 Task bundle, and
optionally pushed to the reporting system once per loop ("study ready to read" webhook).
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone

import httpx
import structlog
from fastapi import APIRouter, Request, Response
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.task import Task
from pydantic import BaseModel

from refloop.config import Settings
from refloop.domain.loop import Loop, Stage
from refloop.domain.policy import Policy
from refloop.store.imaging import ImagingStore

log = structlog.get_logger()

READING_STAGES = (Stage.ARCHIVED.value, Stage.REPORTED_PRELIMINARY.value)
PRIORITY_RANK = {"stat": 0, "urgent": 1, "routine": 2}
_FAR = datetime.max.replace(tzinfo=timezone.utc)


class ReadingItem(BaseModel):
    referral_id: str
    priority: str
    stage: str
    accession_number: str
    study_instance_uid: str
    modality: str
    procedure_code: str
    procedure_display: str
    archived_at: datetime | None
    report_due: datetime | None
    waiting_seconds: int
    overdue: bool
    archived_instances: int
    needs_attention: bool


def reading_item(loop: Loop, policy: Policy, now: datetime) -> ReadingItem:
    ref = loop.referral
    service = ref.service
    archived_at = loop.milestones.get(Stage.ARCHIVED.value) or loop.stage_since
    due = archived_at + policy.stages.final_report.for_priority(service.priority.value) if archived_at else None
    return ReadingItem(
        referral_id=ref.referral_id,
        priority=service.priority.value,
        stage=loop.stage.value,
        accession_number=ref.identifiers.accession_number,
        study_instance_uid=ref.identifiers.study_instance_uid,
        modality=service.modality,
        procedure_code=service.procedure_code,
        procedure_display=service.procedure_display,
        archived_at=archived_at,
        report_due=due,
        waiting_seconds=max(0, int((now - archived_at).total_seconds())) if archived_at else 0,
        overdue=bool(due and now > due),
        archived_instances=loop.archived_instances,
        needs_attention=loop.needs_attention,
    )


def reading_worklist(imaging: ImagingStore, policy: Policy, now: datetime | None = None) -> list[ReadingItem]:
    now = now or datetime.now(timezone.utc)
    items = [reading_item(loop, policy, now) for loop in imaging.loops_in_stages(READING_STAGES)]
    return sorted(items, key=lambda i: (PRIORITY_RANK.get(i.priority, 9), i.report_due or _FAR, i.referral_id))


def _fhir_id(referral_id: str) -> str:
    return ("reading-" + re.sub(r"[^A-Za-z0-9.-]", "-", referral_id))[:64]


def as_task(item: ReadingItem) -> Task:
    """A FHIR R4 Task asking for the study to be read (task-code `fulfill`)."""
    data: dict = {
        "resourceType": "Task",
        "id": _fhir_id(item.referral_id),
        "identifier": [{"system": "urn:refloop:referral", "value": item.referral_id}],
        "status": "in-progress" if item.stage == Stage.REPORTED_PRELIMINARY.value else "ready",
        "businessStatus": {"text": item.stage},
        "intent": "order",
        "priority": item.priority,
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}],
            "text": "Read and report the imaging study",
        },
        "description": " ".join(x for x in (item.modality, item.procedure_display) if x) or "imaging study",
        "input": [
            {"type": {"text": "archived instances"}, "valueUnsignedInt": item.archived_instances},
            {"type": {"text": "time waiting"}, "valueDuration": {"value": round(item.waiting_seconds / 60, 1), "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}},
        ],
    }
    if item.study_instance_uid:
        data["focus"] = {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{item.study_instance_uid}"}}
    if item.accession_number:
        data["basedOn"] = [{
            "type": "ServiceRequest",
            "identifier": {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "value": item.accession_number,
            },
        }]
    if item.procedure_code or item.procedure_display:
        coding = [{"code": item.procedure_code, "display": item.procedure_display or None}] if item.procedure_code else None
        data["input"].append({"type": {"text": "procedure"}, "valueCodeableConcept": {"coding": coding, "text": item.procedure_display or None}})
    if item.archived_at:
        data["authoredOn"] = item.archived_at.isoformat()
    if item.report_due:
        data["restriction"] = {"period": {"end": item.report_due.isoformat()}}
    return Task.model_validate(data)


def as_bundle(items: list[ReadingItem]) -> Bundle:
    return Bundle.model_validate({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(items),
        "entry": [{"fullUrl": f"Task/{_fhir_id(i.referral_id)}", "resource": as_task(i), "search": {"mode": "match"}} for i in items],
    })


# Mounted by the HTTP gateway (`EXTRA_ROUTERS`) behind its token auth; it reads the store and
# settings the gateway keeps on `app.state`.
router = APIRouter(tags=["reporting worklist"])


def _items(request: Request) -> list[ReadingItem]:
    state = request.app.state
    return reading_worklist(ImagingStore(state.store.engine), state.settings.policy())


@router.get("/worklist/reporting", response_model=list[ReadingItem])
async def reporting_worklist(request: Request) -> list[ReadingItem]:
    """Archived studies waiting for their report: priority, then report deadline."""
    return await asyncio.to_thread(_items, request)


@router.get("/worklist/reporting/fhir", response_class=Response)
async def reporting_worklist_fhir(request: Request) -> Response:
    """The same as a FHIR R4 Bundle (searchset) of Tasks."""
    items = await asyncio.to_thread(_items, request)
    return Response(content=as_bundle(items).model_dump_json(exclude_none=True), media_type="application/fhir+json")


# --- "study ready to read" webhook -------------------------------------------------------------


async def notify_ready(imaging: ImagingStore, policy: Policy, http: httpx.AsyncClient, url: str) -> int:
    """POST each loop newly on the reporting worklist once; returns how many were notified."""
    items = await asyncio.to_thread(reading_worklist, imaging, policy)
    done = await asyncio.to_thread(imaging.reading_notified, [i.referral_id for i in items])
    sent = 0
    for item in items:
        if item.referral_id in done:
            continue
        try:
            resp = await http.post(url, json={"event": "study_ready_to_read", **item.model_dump(mode="json")})
        except httpx.HTTPError as err:
            log.warning("reading_webhook_failed", referral_id=item.referral_id, error=type(err).__name__)
            return sent  # try again next round
        if resp.is_success:
            await asyncio.to_thread(imaging.mark_reading_notified, item.referral_id, resp.status_code)
            sent += 1
        else:
            log.warning("reading_webhook_refused", referral_id=item.referral_id, status=resp.status_code)
    return sent


async def serve_reading_notifier(settings: Settings, stop: asyncio.Event, interval: float = 5.0) -> None:
    """`refloop dev` service: runs only when REFLOOP_READING_WEBHOOK is set."""
    if not settings.reading_webhook:
        await stop.wait()
        return
    from refloop.store.db import make_engine

    imaging = ImagingStore(make_engine(settings.db_url))
    policy = settings.policy()
    async with httpx.AsyncClient(timeout=10) as http:
        while not stop.is_set():
            try:
                await notify_ready(imaging, policy, http, settings.reading_webhook)
            except Exception:  # the store is away: next round
                log.exception("reading_notifier_failed")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
