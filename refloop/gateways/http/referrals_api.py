"""A referral's state and timeline (SQL read model), and the requester's plain acknowledgment."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel, Field

from refloop.domain.events import ResultAcknowledged
from refloop.domain.loop import Loop, Outcome, Stage, TimelineEntry
from refloop.domain.referral import Appointment, Identifiers, PatientId, ServicePlan
from refloop.gateways.http.auth import current_system
from refloop.gateways.http.handover import hand_over
from refloop.gateways.http.problems import ApiError, problem_responses
from refloop.gateways.http.schemas import Receipt, receipt
from refloop.gateways.intake import Inbound, Keys, Status
from refloop.store.repo import Store

router = APIRouter(tags=["referrals"])


class TimelineItem(TimelineEntry):
    """A timeline entry as the SQL audit log keeps it, with its place in the loop's timeline."""

    seq: int


class AnomalyView(BaseModel):
    at: datetime
    code: str
    detail: str


class ReportView(BaseModel):
    report_id: str = ""
    status: str = ""
    version: int = 0
    critical: bool = False
    issued_at: datetime | None = None


class ReferralView(BaseModel):
    """Where the referral stands. Patient demographics are left out: the ID and issuer suffice."""

    referral_id: str
    stage: Stage
    stage_since: datetime | None = None
    outcome: Outcome | None = None
    outcome_reason: str = ""
    needs_attention: bool = False
    escalation_level: int = 0
    placer_order_number: str = ""
    patient: PatientId | None = None
    service: ServicePlan
    appointment: Appointment
    identifiers: Identifiers
    performed_instances: int = 0
    archived_instances: int = 0
    report: ReportView
    delivered_version: int = 0
    acknowledged_version: int = 0
    pending_delivery: str = ""
    milestones: dict[str, datetime] = {}
    open_anomalies: list[AnomalyView] = []
    timeline: list[TimelineItem] = []


class AcknowledgmentRequest(BaseModel):
    report_version: int | None = Field(None, ge=1, description="the report version acknowledged; default: the one delivered last")
    by: str = Field("", description="who acknowledged (practitioner); default: the authenticated system")
    occurred_at: datetime | None = None


def _load(store: Store, ident: str) -> tuple[Loop, list] | None:
    referral_id = store.resolve(ident)
    loop = store.get_loop(referral_id) if referral_id else None
    if loop is None or referral_id is None:
        return None
    return loop, store.timeline(referral_id)


async def _find(request: Request, ident: str) -> tuple[Loop, list]:
    found = await asyncio.to_thread(_load, request.app.state.store, ident)
    if found is None:
        raise ApiError(404, "Unknown referral", f"no referral with placer order number or accession {ident!r}", slug="unknown-referral", fhir_code="not-found")
    return found


@router.get(
    "/referrals/{ident}",
    response_model=ReferralView,
    summary="A referral's state and timeline",
    description="`ident` is the placer order number or the accession number. From the SQL read model.",
    responses=problem_responses(401, 403, 404),
)
async def get_referral(ident: str, request: Request, system: str = Depends(current_system)) -> ReferralView:
    loop, rows = await _find(request, ident)
    ref = loop.referral
    return ReferralView(
        referral_id=ref.referral_id,
        stage=loop.stage,
        stage_since=loop.stage_since,
        outcome=loop.outcome,
        outcome_reason=loop.outcome_reason,
        needs_attention=loop.needs_attention,
        escalation_level=loop.escalation_level,
        placer_order_number=ref.placer_order_number,
        patient=ref.patient.id if ref.patient else None,
        service=ref.service,
        appointment=ref.appointment,
        identifiers=ref.identifiers,
        performed_instances=loop.performed_instances,
        archived_instances=loop.archived_instances,
        report=ReportView(**loop.report.model_dump(exclude={"conclusion"})),
        delivered_version=loop.delivered_version,
        acknowledged_version=loop.acknowledged_version,
        pending_delivery=loop.pending_delivery,
        milestones=loop.milestones,
        open_anomalies=[AnomalyView(at=a.at, code=a.code, detail=a.detail) for a in loop.open_anomalies],
        timeline=[TimelineItem.model_validate(r, from_attributes=True) for r in rows],
    )


@router.post(
    "/referrals/{ident}/acknowledgment",
    response_model=Receipt,
    status_code=202,
    summary="The requester acknowledges the result",
    description="Closes the loop once the result is delivered (an amended result needs a new acknowledgment). "
    "Idempotent per `Idempotency-Key` header, else per referral and report version.",
    responses={200: {"model": Receipt, "description": "duplicate"}, **problem_responses(401, 403, 404, 422, 503)},
)
async def acknowledge(
    ident: str,
    request: Request,
    response: Response,
    body: AcknowledgmentRequest | None = None,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=200),
    system: str = Depends(current_system),
) -> Receipt:
    body = body or AcknowledgmentRequest()
    loop, _ = await _find(request, ident)
    rid = loop.referral.referral_id
    version = body.report_version or loop.delivered_version or loop.report.version
    key = f"ack:{idempotency_key}" if idempotency_key else f"ack:{rid}:v{version}"
    event = ResultAcknowledged(
        event_id=f"http:{system}:{key}",
        occurred_at=body.occurred_at or datetime.now(timezone.utc),
        source=system,
        report_version=body.report_version,
        by=body.by or system,
    )
    raw = body.model_dump_json()
    result = await hand_over(request, Inbound("json", system, key, "acknowledgment", raw, event, Keys(placer_order_number=rid)))
    if result.status == Status.DUPLICATE:
        response.status_code = 200
    return receipt(result)
