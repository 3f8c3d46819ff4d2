"""The HTTP gateway app: JSON events, FHIR R4 resources, the referral read model, acknowledgments."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from refloop import __version__
from refloop.config import Settings
from refloop.gateways.http import events_api, referrals_api
from refloop.gateways.http.auth import TokenAuth, bearer, current_system
from refloop.gateways.http.fhir import api as fhir_api
from refloop.gateways.http.handover import keep_rejected
from refloop.gateways.http.problems import ApiError, error_response
from refloop.gateways.intake import Intake
from refloop.store.repo import Store

DESCRIPTION = """\
Back-end systems signal referral loops here: typed JSON events (`/events/{kind}`) or FHIR R4
resources (`/fhir/...`). An answer comes only after the event is durably in its loop (or parked
until its referral is known): on 503, retry with the same `event_id` / resource version.
Authenticate with `Authorization: Bearer <token of your system>`.
"""

# Built once: the routes are generated from the event and resource types, not from settings.
_EVENTS = events_api.build_router()


def create_app(
    intake: Intake,
    store: Store,
    settings: Settings,
    *,
    routers: Sequence[APIRouter] = (),
    handover_timeout: float = 15.0,
) -> FastAPI:
    """`routers`: extra routers (e.g. the reporting worklist), mounted behind the same token
    auth; they reach the store and intake through `request.app.state`."""
    app = FastAPI(
        title="refloop gateway",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/docs",
        openapi_tags=[
            {"name": "events", "description": "One operation per event kind: the body is the event."},
            {"name": "FHIR R4", "description": "FHIR R4 resources, parsed with fhir.resources (R4B models)."},
            {"name": "referrals", "description": "State, timeline and the requester's acknowledgment."},
        ],
    )
    app.state.intake = intake
    app.state.store = store
    app.state.settings = settings
    app.state.auth = TokenAuth(settings)
    app.state.handover_timeout = handover_timeout
    _install_error_handlers(app)
    app.include_router(_EVENTS)
    app.include_router(referrals_api.router)
    app.include_router(fhir_api.router)
    for extra in routers:
        app.include_router(extra, dependencies=[Depends(current_system)])

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> Response:
        return error_response(err, request)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> Response:
        try:  # an unauthenticated sender learns about its token first, not about its body
            system = request.app.state.auth.system(await bearer(request))
        except ApiError as auth_error:
            return error_response(auth_error, request)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in err.errors()]
        detail = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in errors[:10])
        if request.url.path.startswith("/events/"):
            raw = (await request.body()).decode("utf-8", "replace")
            await keep_rejected(request, "json", system, request.url.path.rsplit("/", 1)[-1], raw, f"invalid body: {detail}")
        return error_response(ApiError(422, "Invalid body", detail, slug="invalid-body", fhir_code="invalid", errors=errors), request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(err.status_code, "processing")
        slug = {404: "not-found", 405: "method-not-allowed"}.get(err.status_code, "http-error")
        error = ApiError(err.status_code, str(err.detail), f"{request.method} {request.url.path}: {err.detail}", slug=slug, fhir_code=code, headers=dict(err.headers or {}))
        return error_response(error, request)
