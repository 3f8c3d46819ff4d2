"""OperationOutcome answers, as a FHIR server gives them."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import Response
from fhir.resources.R4B.operationoutcome import OperationOutcome

FHIR_JSON = "application/fhir+json"
INTAKE_STATUS_SYSTEM = "urn:refloop:intake-status"


def outcome(severity: str, code: str, diagnostics: str, *, expression: list[str] | None = None, status: str = "") -> dict[str, Any]:
    """One-issue OperationOutcome as JSON; `status` (accepted, parked, ...) goes in issue.details for machines."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    if status:
        issue["details"] = {"coding": [{"system": INTAKE_STATUS_SYSTEM, "code": status}], "text": status}
    return OperationOutcome(issue=[issue]).model_dump(mode="json", exclude_none=True)


def fhir_response(status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> Response:
    content = b"" if body is None else json.dumps(body).encode()
    return Response(content, status_code=status, headers=headers, media_type=FHIR_JSON)


def outcome_response(status: int, severity: str, code: str, diagnostics: str, *, expression: list[str] | None = None, headers: dict[str, str] | None = None) -> Response:
    return fhir_response(status, outcome(severity, code, diagnostics, expression=expression), headers)
