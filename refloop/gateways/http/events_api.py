"""JSON event endpoints: `POST /events/{kind}`, one operation and one schema per event kind.

The body is the event itself (without `kind` and `source`: the path names the kind, the token
names the source) plus `referral` (the placer order number) or `correlation` keys when the
referral is not known to the sender. `event_id` is the idempotency key: resend with the same one.
"""

# No `from __future__ import annotations`: FastAPI must see each generated body model itself.

from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field, create_model

from refloop.domain.events import EVENT_TYPES, EventBase
from refloop.gateways.http.auth import current_system
from refloop.gateways.http.handover import hand_over, keep_rejected
from refloop.gateways.http.problems import ApiError, problem_responses
from refloop.gateways.http.schemas import CorrelationKeys, Receipt, receipt
from refloop.gateways.intake import Inbound, Keys, Status

EVENT_SUMMARIES = {
    "order_placed": "A new order (referral) from the requester",
    "order_changed": "The order's service or requester changed",
    "scheduled": "The department booked a slot",
    "rescheduled": "The booking moved",
    "appointment_cancelled": "The booking was cancelled",
    "arrived": "The patient checked in (identity confirmed at the desk)",
    "procedure_started": "Acquisition started (MPPS IN PROGRESS)",
    "procedure_completed": "Acquisition completed (MPPS COMPLETED)",
    "procedure_discontinued": "Acquisition discontinued (MPPS DISCONTINUED, CID 9300 reason)",
    "study_archived": "The images are in the archive",
    "report_issued": "A preliminary or final report",
    "report_revised": "The final report was amended, corrected or appended",
    "report_withdrawn": "The report was cancelled or entered in error",
    "result_delivered": "The result (or exception notice) reached the requester",
    "result_acknowledged": "The requester acknowledged the result",
    "referral_cancelled": "The order was cancelled (duplicate, by the requester, ...)",
    "did_not_attend": "The patient did not attend",
    "unable_to_perform": "The procedure could not be performed (contraindication, refusal, ...)",
    "patient_merged": "The patient's identifier was merged into another",
}


def request_model(kind: str, event_type: type[EventBase]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "referral": (str | None, Field(None, description="the referral's placer order number (its ID)", examples=["PO-1"])),
        "correlation": (CorrelationKeys, Field(default_factory=CorrelationKeys, description="other keys, when the referral is not known")),
    }
    for name, info in event_type.model_fields.items():
        if name in ("kind", "source"):
            continue
        if name == "occurred_at":
            fields[name] = (datetime | None, Field(None, description="when it happened at the source; default: when received"))
            continue
        if name == "event_id":
            fields[name] = (str, Field(min_length=1, description="the sender's idempotency key: a retry carries the same one"))
            continue
        fields[name] = (info.annotation, info)
    title = "".join(part.title() for part in kind.split("_")) + "Event"
    return create_model(title, __doc__=f"{EVENT_SUMMARIES.get(kind, kind)}.", **fields)


def event_keys(referral: str | None, correlation: CorrelationKeys, event: EventBase) -> Keys:
    """The sender's keys, completed with the identifiers the event itself carries."""
    keys = Keys(placer_order_number=referral or "", **correlation.model_dump(exclude={"patient"}))
    ids = getattr(event, "identifiers", None)
    derived = {
        "placer_order_number": getattr(event, "placer_order_number", ""),
        "filler_order_number": ids.filler_order_number if ids else "",
        "accession_number": getattr(event, "accession_number", "") or (ids.accession_number if ids else ""),
        "study_instance_uid": getattr(event, "study_instance_uid", "") or (ids.study_instance_uid if ids else ""),
        "sps_id": ids.sps_id if ids else "",
        "requested_procedure_id": ids.requested_procedure_id if ids else "",
    }
    for name, value in derived.items():
        if value and not getattr(keys, name):
            setattr(keys, name, value)
    if event.kind == "arrived" and not keys.placer_order_number:  # type: ignore[attr-defined]
        keys.patient = correlation.patient or event.patient  # type: ignore[attr-defined]
        keys.match_patient_awaiting_arrival = True
    return keys


def _add_route(router: APIRouter, kind: str, event_type: type[EventBase]) -> None:
    body_model = request_model(kind, event_type)

    async def post_event(request: Request, response: Response, body: body_model, system: str = Depends(current_system)) -> Receipt:  # type: ignore[valid-type]
        data = body.model_dump(exclude={"referral", "correlation"})  # type: ignore[attr-defined]
        data["occurred_at"] = data["occurred_at"] or datetime.now(timezone.utc)
        if kind == "order_placed" and not data.get("placer_order_number"):
            data["placer_order_number"] = body.referral or ""  # type: ignore[attr-defined]
        event = event_type.model_validate({**data, "kind": kind, "source": system})
        keys = event_keys(body.referral, body.correlation, event)  # type: ignore[attr-defined]
        raw = (await request.body()).decode("utf-8", "replace")
        if not (keys.placer_order_number or keys.lookup() or keys.match_patient_awaiting_arrival):
            detail = "the event names no referral: give `referral` (the placer order number) or a correlation key"
            await keep_rejected(request, "json", system, kind, raw, detail, key=event.event_id)
            raise ApiError(422, "No referral", detail, slug="no-referral")
        result = await hand_over(request, Inbound("json", system, event.event_id, kind, raw, event, keys))
        if not result.positive:
            raise ApiError(422, "Event rejected", result.detail or "the event was rejected", slug="rejected")
        if result.status == Status.DUPLICATE:
            response.status_code = 200
        return receipt(result)

    router.add_api_route(
        f"/events/{kind}",
        post_event,
        methods=["POST"],
        status_code=202,
        response_model=Receipt,
        name=f"post_{kind}",
        operation_id=f"post_{kind}",
        summary=EVENT_SUMMARIES.get(kind, kind),
        description=f"Signal `{kind}` to the referral's loop. 202 once the event is durably in the loop (or parked); "
        "200 for a resend of the same `event_id`.",
        responses={200: {"model": Receipt, "description": "duplicate: received before"}, **problem_responses(401, 403, 422, 503)},
    )


def build_router() -> APIRouter:
    router = APIRouter(tags=["events"])
    for kind, event_type in EVENT_TYPES.items():
        _add_route(router, kind, event_type)
    return router
