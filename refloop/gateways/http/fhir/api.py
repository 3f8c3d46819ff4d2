"""FHIR R4 endpoints: create/update of the resource types refloop takes, batch Bundles at the
base, and a CapabilityStatement. refloop is a FHIR *receiver*, not a repository: it answers
each resource with what became of it (an OperationOutcome by default), never stores it for reading.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from refloop.gateways.http.auth import current_system
from refloop.gateways.http.fhir.outcome import FHIR_JSON, fhir_response, outcome
from refloop.gateways.http.fhir.refs import Resolver
from refloop.gateways.http.fhir.registry import SUPPORTED, WHAT_EACH_MEANS, message_key, translate
from refloop.gateways.http.fhir.translation import Context, NotTranslatable
from refloop.gateways.http.handover import hand_over, keep_rejected
from refloop.gateways.intake import Inbound, Result, Status

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])


@dataclass
class Answer:
    status: int
    outcome: dict[str, Any]
    resource: dict[str, Any] | None = None  # the resource as received, for Prefer: return=representation

    @property
    def ok(self) -> bool:
        return self.status < 400


def _error(status: int, code: str, reason: str, expression: list[str] | None = None) -> Answer:
    return Answer(status, outcome("error", code, reason, expression=expression))


def _describe(result: Result, kind: str) -> str:
    if result.status == Status.ACCEPTED:
        return f"{kind} accepted for referral {result.referral_id}"
    if result.status == Status.PARKED:
        return f"{kind} kept: {result.detail}; it is applied once its referral is known"
    if result.status == Status.AMBIGUOUS:
        return f"{kind} kept for an operator: {result.detail}"
    first = result.first_status.value if result.first_status else "received"
    where = f" for referral {result.referral_id}" if result.referral_id else ""
    return f"already received ({first}{where}); nothing changed"


async def receive_resource(request: Request, system: str, resource_type: str, data: Any, raw: str, path_id: str | None = None) -> Answer:
    """One resource, from a create, an update or a batch entry."""
    if resource_type not in SUPPORTED:
        reason = f"refloop does not take {resource_type} resources; it takes {', '.join(SUPPORTED)}"
        if resource_type == "Bundle":
            reason += " (send a batch Bundle to the base URL)"
        await keep_rejected(request, "fhir", system, resource_type, raw, reason)
        return _error(404, "not-supported", reason)
    if not isinstance(data, dict) or data.get("resourceType") != resource_type:
        found = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
        reason = f"the body is not a {resource_type} (resourceType {found!r})"
        await keep_rejected(request, "fhir", system, resource_type, raw, reason)
        return _error(400, "structure", reason, [f"{resource_type}.resourceType"])
    if path_id is not None and data.get("id") != path_id:
        reason = f"the id in the URL ({path_id}) and in the resource ({data.get('id')}) differ"
        await keep_rejected(request, "fhir", system, resource_type, raw, reason)
        return _error(400, "invariant", reason, [f"{resource_type}.id"])
    key = message_key(resource_type, data)
    ctx = Context(system, key, datetime.now(timezone.utc), Resolver(request.app.state.store))
    try:
        translation = await asyncio.to_thread(translate, resource_type, data, ctx)
    except NotTranslatable as err:
        await keep_rejected(request, "fhir", system, resource_type, raw, err.reason, key=key)
        return _error(err.status, err.code, err.reason, err.expression)
    result = await hand_over(request, Inbound("fhir", system, key, resource_type, raw, translation.event, translation.keys))
    if not result.positive:
        return _error(422, "processing", result.detail or "rejected")
    status = {Status.ACCEPTED: 201, Status.DUPLICATE: 200}.get(result.status, 202)
    kind = translation.event.kind  # type: ignore[attr-defined]
    return Answer(status, outcome("information", "informational", _describe(result, kind), status=result.status.value), data)


async def _read_json(request: Request, system: str, resource_type: str) -> tuple[Any, str, Answer | None]:
    body = await request.body()
    raw = body.decode("utf-8", "replace")
    content_type = request.headers.get("content-type", "")
    if "xml" in content_type:
        reason = "refloop reads FHIR JSON only (application/fhir+json)"
        await keep_rejected(request, "fhir", system, resource_type, raw, reason)
        return None, raw, _error(415, "not-supported", reason)
    try:
        return json.loads(body), raw, None
    except (ValueError, UnicodeDecodeError) as err:
        reason = f"the body is not JSON: {err}"
        await keep_rejected(request, "fhir", system, resource_type, raw, reason)
        return None, raw, _error(400, "structure", reason)


def _respond(request: Request, answer: Answer) -> Response:
    prefer = request.headers.get("prefer", "")
    if answer.ok and "return=minimal" in prefer:
        return fhir_response(answer.status, None)
    if answer.ok and "return=representation" in prefer:
        return fhir_response(answer.status, answer.resource)
    return fhir_response(answer.status, answer.outcome)


async def _single(request: Request, system: str, resource_type: str, path_id: str | None = None) -> Response:
    data, raw, bad = await _read_json(request, system, resource_type)
    if bad:
        return _respond(request, bad)
    return _respond(request, await receive_resource(request, system, resource_type, data, raw, path_id))


_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"description": "accepted: the event is in the referral's loop", "content": {FHIR_JSON: {"schema": {"type": "object"}}}},
    200: {"description": "duplicate: this resource version was received before"},
    202: {"description": "kept (parked until its referral is known, or held for an operator)"},
    400: {"description": "not JSON, or not the resource type of the URL"},
    401: {"description": "no bearer token"},
    403: {"description": "unknown token"},
    422: {"description": "valid FHIR that refloop cannot act on (status, no referral...); OperationOutcome says why"},
    503: {"description": "the workflow engine is unreachable: retry later"},
}


def _body_doc(resource_type: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {FHIR_JSON: {"schema": {"type": "object", "description": f"a FHIR R4 {resource_type}"}}},
        },
        "parameters": [
            {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string", "enum": ["return=OperationOutcome", "return=representation", "return=minimal"]}},
        ],
    }


def _add_type_routes(resource_type: str) -> None:
    async def create(request: Request, system: str = Depends(current_system)) -> Response:
        return await _single(request, system, resource_type)

    async def update(resource_id: str, request: Request, system: str = Depends(current_system)) -> Response:
        return await _single(request, system, resource_type, resource_id)

    doc = WHAT_EACH_MEANS[resource_type]
    router.add_api_route(f"/{resource_type}", create, methods=["POST"], summary=f"Create {resource_type}", description=doc,
                         response_class=Response, responses=_RESPONSES, openapi_extra=_body_doc(resource_type), operation_id=f"fhir_create_{resource_type}")
    router.add_api_route(f"/{resource_type}/{{resource_id}}", update, methods=["PUT"], summary=f"Update {resource_type}", description=doc,
                         response_class=Response, responses=_RESPONSES, openapi_extra=_body_doc(resource_type), operation_id=f"fhir_update_{resource_type}")


@router.get("/metadata", summary="CapabilityStatement", response_class=Response)
async def metadata() -> Response:
    return fhir_response(200, capability_statement())


for _type in SUPPORTED:
    _add_type_routes(_type)


@router.post("", summary="Batch Bundle", description="A Bundle of type batch: each entry (POST or PUT of a resource type above) "
             "is handled on its own; the answer is a batch-response Bundle.", response_class=Response, openapi_extra=_body_doc("Bundle"))
async def batch(request: Request, system: str = Depends(current_system)) -> Response:
    data, raw, bad = await _read_json(request, system, "Bundle")
    if bad:
        return _respond(request, bad)
    why = _not_a_batch(data)
    if why:
        await keep_rejected(request, "fhir", system, "Bundle", raw, why)
        status = 400 if not (isinstance(data, dict) and data.get("resourceType") == "Bundle") else 422
        return fhir_response(status, outcome("error", "not-supported", why, expression=["Bundle.type"]))
    entries = []
    for entry in data.get("entry") or []:
        answer = await _batch_entry(request, system, entry)
        entries.append({"response": {"status": f"{answer.status} {HTTPStatus(answer.status).phrase}", "outcome": answer.outcome}})
    return fhir_response(200, {"resourceType": "Bundle", "type": "batch-response", "entry": entries})


def _not_a_batch(data: Any) -> str:
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        return "POST to the base URL takes a batch Bundle; post a single resource to [base]/<type>"
    kind = data.get("type")
    if kind == "batch":
        return ""
    if kind == "transaction":
        return ("refloop does not take transaction Bundles: each resource goes to its own referral loop, "
                "so they cannot be applied all-or-nothing; send the same entries as a batch Bundle")
    return (f"a Bundle of type '{kind}' is a set of resources, not a request: refloop takes batch Bundles "
            "(entries with request.method POST or PUT) or single resources posted to [base]/<type>")


async def _batch_entry(request: Request, system: str, entry: Any) -> Answer:
    req = entry.get("request") if isinstance(entry, dict) else None
    resource = entry.get("resource") if isinstance(entry, dict) else None
    method = (req or {}).get("method", "")
    url = str((req or {}).get("url", "")).split("?")[0].strip("/")
    parts = url.split("/")[-2:] if method == "PUT" else url.split("/")[-1:]
    if method not in ("POST", "PUT") or not parts[0] or resource is None:
        return _error(400, "not-supported", "a batch entry must POST or PUT a resource (request.method, request.url, resource)", ["Bundle.entry.request"])
    resource_type = parts[0]
    path_id = parts[1] if method == "PUT" and len(parts) == 2 else None
    return await receive_resource(request, system, resource_type, resource, json.dumps(resource), path_id)


@router.post("/{resource_type}", include_in_schema=False)
async def create_unsupported(resource_type: str, request: Request, system: str = Depends(current_system)) -> Response:
    return await _single(request, system, resource_type)


@router.put("/{resource_type}/{resource_id}", include_in_schema=False)
async def update_unsupported(resource_type: str, resource_id: str, request: Request, system: str = Depends(current_system)) -> Response:
    return await _single(request, system, resource_type, resource_id)


def capability_statement() -> dict[str, Any]:
    resources = [
        {"type": t, "interaction": [{"code": "create"}, {"code": "update"}], "documentation": WHAT_EACH_MEANS[t]} for t in SUPPORTED
    ]
    cs = CapabilityStatement.model_validate(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": date.today().isoformat(),
            "kind": "instance",
            "software": {"name": "refloop"},
            "implementation": {"description": "refloop gateway: FHIR resources become referral loop events"},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json"],
            "rest": [
                {
                    "mode": "server",
                    "documentation": "Answers each resource with an OperationOutcome saying what became of it; stores nothing for reading.",
                    "security": {"description": "Authorization: Bearer <token of your system>"},
                    "resource": resources,
                    "interaction": [{"code": "batch"}],
                }
            ],
        }
    )
    return cs.model_dump(mode="json", exclude_none=True)
