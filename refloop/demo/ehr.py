"""The requester's EHR for the demo, and the department's pager: one small HTTP server on loopback.

- `PUT /fhir/{type}/{id}`: refloop delivers results (DiagnosticReport) and status updates (Task)
  here, as it would to a real requester's FHIR server. A result (final, amended, corrected,
  appended) is read by a clinician and acknowledged through refloop's HTTP API, naming the
  report version the EHR received; a no-result notice (cancelled) needs no acknowledgment.
- `POST /pager`: refloop's escalation webhook (the department's on-call pager).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from refloop.outbound.fhir import REPORT_VERSION_EXT, V2_0203

RESULT_STATUSES = {"final", "amended", "corrected", "appended"}
READING_DELAY = 0.3  # seconds a clinician takes to open the result

Notify = Callable[[str, str, bool], None]  # (FHIR resource id, text, ok)
Page = Callable[[dict], None]  # the escalation as refloop posted it


@dataclass
class Chart:
    """What the EHR holds for one order (keyed by the FHIR id refloop gives its resources)."""

    reports: list[tuple[str, int]] = field(default_factory=list)  # (status, version) as received
    milestones: list[str] = field(default_factory=list)  # Task.businessStatus codes, in order
    acks: list[tuple[int, int]] = field(default_factory=list)  # (version, HTTP status of refloop's answer)

    def summary(self) -> str:
        """What the requester got, in a few words: "final v1 ✓, corrected v2 ✓"."""
        parts = []
        for status, version in self.reports:
            if status in RESULT_STATUSES:
                acked = any(v == version and code < 300 for v, code in self.acks)
                parts.append(f"{status} v{version}{' ✓' if acked else ''}")
            else:
                parts.append(f"{status} notice")
        return ", ".join(dict.fromkeys(parts)) or (f"{len(self.milestones)} status updates" if self.milestones else "-")


class Ehr:
    def __init__(self, api_base: str = "", token: str = "", notify: Notify | None = None, page: Page | None = None):
        self.api_base, self.token = api_base, token
        self.notify: Notify = notify or (lambda _id, _text, _ok: None)
        self.page: Page = page or (lambda _page: None)
        self.charts: dict[str, Chart] = {}
        self.pages: list[dict] = []
        self._tasks: set[asyncio.Task] = set()
        self.app = self._build_app()

    def chart(self, resource_id: str) -> Chart:
        return self.charts.setdefault(resource_id, Chart())

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="demo requester EHR")

        @app.put("/fhir/{resource_type}/{resource_id}")
        async def put(resource_type: str, resource_id: str, request: Request):
            body = await request.json()
            if resource_type == "DiagnosticReport":
                self._report(resource_id, body)
            elif resource_type == "Task":
                code = ((body.get("businessStatus") or {}).get("coding") or [{}])[0].get("code", "")
                self.chart(resource_id).milestones.append(code)
                self.notify(resource_id, f"EHR ← Task update: {code}", True)
            return JSONResponse(body, media_type="application/fhir+json")

        @app.post("/pager")
        async def pager(request: Request):
            page = await request.json()
            self.pages.append(page)
            self.page(page)
            return {"ok": True}

        return app

    def _report(self, resource_id: str, body: dict) -> None:
        status = body.get("status", "")
        version = next((e.get("valueInteger") for e in body.get("extension") or [] if e.get("url") == REPORT_VERSION_EXT), 0) or 0
        self.chart(resource_id).reports.append((status, version))
        if status in RESULT_STATUSES:
            self.notify(resource_id, f"EHR ← DiagnosticReport {status} v{version}", True)
            task = asyncio.create_task(self._acknowledge(resource_id, body, version))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.notify(resource_id, f"EHR ← DiagnosticReport {status}: {(body.get('conclusion') or '')[:80]}", True)

    async def _acknowledge(self, resource_id: str, report: dict, version: int) -> None:
        """The clinician has read it: acknowledge that version through refloop's HTTP API."""
        await asyncio.sleep(READING_DELAY)
        ident = _order_ident(report)
        try:
            async with httpx.AsyncClient(base_url=self.api_base, headers={"Authorization": f"Bearer {self.token}"}, timeout=30) as http:
                resp = await http.post(
                    f"/referrals/{ident}/acknowledgment",
                    json={"report_version": version, "by": "Dr Requester (demo EHR)"},
                    headers={"Idempotency-Key": f"{resource_id}-v{version}"},
                )
            code = resp.status_code
        except httpx.HTTPError as err:
            self.notify(resource_id, f"EHR → acknowledgment v{version} failed: {type(err).__name__}", False)
            return
        self.chart(resource_id).acks.append((version, code))
        self.notify(resource_id, f"EHR → acknowledgment v{version} → HTTP {code}", code < 300)

    async def drain(self) -> None:
        """Wait for acknowledgments still on their way."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _order_ident(report: dict) -> str:
    """How the EHR names the order to refloop: the accession the report carries, else its placer number."""
    for ident in report.get("identifier") or []:
        codes = [c.get("code") for c in (ident.get("type") or {}).get("coding") or [] if c.get("system") in (None, V2_0203)]
        if "ACSN" in codes and ident.get("value"):
            return ident["value"]
    for ref in report.get("basedOn") or []:
        value = (ref.get("identifier") or {}).get("value")
        if value:
            return value
    return ""
