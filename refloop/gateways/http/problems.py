"""Errors of the HTTP API: RFC 9457 problem details on the JSON API, OperationOutcome on /fhir."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from refloop.gateways.http.fhir.outcome import outcome_response

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """An answer the sender can act on. `slug` names the problem type; `fhir_code` is the
    OperationOutcome issue type used when the route is a FHIR one."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: str,
        fhir_code: str = "processing",
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ):
        super().__init__(detail)
        self.status, self.title, self.detail, self.slug = status, title, detail, slug
        self.fhir_code = fhir_code
        self.headers = headers or {}
        self.errors = errors or []


def problem_type(slug: str) -> str:
    return f"urn:refloop:problem:{slug}"


def problem_response(err: ApiError, request: Request) -> Response:
    body: dict[str, Any] = {
        "type": problem_type(err.slug),
        "title": err.title,
        "status": err.status,
        "detail": err.detail,
        "instance": request.url.path,
    }
    if err.errors:
        body["errors"] = err.errors
    return JSONResponse(body, status_code=err.status, headers=err.headers, media_type=PROBLEM_JSON)


def is_fhir_route(request: Request) -> bool:
    return request.url.path == "/fhir" or request.url.path.startswith("/fhir/")


def error_response(err: ApiError, request: Request) -> Response:
    if is_fhir_route(request):
        return outcome_response(err.status, "error", err.fhir_code, err.detail, headers=err.headers)
    return problem_response(err, request)


# OpenAPI: what an error looks like on the JSON API.
PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "example": "urn:refloop:problem:unknown-token"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}, "description": "per-field problems of an invalid body"},
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "no bearer token",
        403: "the token belongs to no configured source system",
        404: "unknown referral",
        422: "invalid body, or the event names no referral",
        503: "the workflow engine is unreachable: retry later (Retry-After)",
    }
    return {s: {"description": text[s], "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}} for s in statuses}
