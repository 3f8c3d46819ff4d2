"""The HTTP gateway's JSON API against a real Temporal server, a real worker and real uvicorn:
one endpoint per event kind, bearer tokens per source system, problem details, the read model,
the requester's acknowledgment, and 503 when Temporal cannot be reached."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import pytest
from fastapi import APIRouter, Depends, Request
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig

from refloop.config import Settings
from refloop.domain.events import EVENT_KINDS
from refloop.gateways.http import create_app
from refloop.gateways.http.auth import AuthNotConfigured, current_system
from refloop.gateways.http.server import serve
from refloop.gateways.intake import Intake
from refloop.store.repo import InboxStore
from tests.conftest import unique
from tests.factories import happy_path
from tests.http_support import TOKENS, free_socket, running_api, serving, settings_for

PROBLEM = "application/problem+json"

# Which system reports which event kind in these tests (the token decides the source).
REPORTED_BY = {"order_placed": "ehr", "report_issued": "reporting", "study_archived": "pacs"}


def body_of(event) -> dict:
    return event.model_dump(mode="json", exclude={"kind", "source"})


async def test_full_loop_through_json_events_closes_on_plain_acknowledgment(client, task_queue, store):
    rid = unique()
    events = happy_path(rid, datetime.now(timezone.utc))
    async with running_api(client, store, task_queue) as api:
        for event in events:
            system = REPORTED_BY.get(event.kind, "ris")
            async with api.client(system) as http:
                resp = await http.post(f"/events/{event.kind}", json={"referral": rid, **body_of(event)})
            assert resp.status_code == 202, resp.text
            assert resp.json() == {"status": "accepted", "referral_id": rid, "detail": "", "first_status": None}
        view = await api.referral(rid, lambda r: r["stage"] == "reported_final")
        assert view["report"]["version"] == 1 and view["archived_instances"] == 120
        assert [t["kind"] for t in view["timeline"]] == [e.kind for e in events]
        assert all(t["applied"] for t in view["timeline"])
        # The token, not the body, names the source.
        assert [t["source"] for t in view["timeline"]][:3] == ["ehr", "ris", "ris"]
        assert view["timeline"][-1]["source"] == "reporting"

        async with api.client("ris") as http:
            resp = await http.post("/events/result_delivered", json={"referral": rid, "event_id": f"{rid}-dlv", "report_version": 1})
        assert resp.status_code == 202
        acc = events[1].identifiers.accession_number
        await api.referral(acc, lambda r: r["stage"] == "delivered")

        async with api.client("ehr") as http:
            first = await http.post(f"/referrals/{acc}/acknowledgment", json={"by": "Dr Who"})
            again = await http.post(f"/referrals/{acc}/acknowledgment", json={"by": "Dr Who"})
        assert first.status_code == 202 and first.json()["status"] == "accepted" and first.json()["referral_id"] == rid
        assert again.status_code == 200 and again.json()["status"] == "duplicate" and again.json()["first_status"] == "accepted"
        view = await api.referral(rid, lambda r: r["stage"] == "closed")
        assert view["outcome"] == "completed" and view["acknowledged_version"] == 1
        acks = [t for t in view["timeline"] if t["kind"] == "result_acknowledged"]
        assert len(acks) == 1 and acks[0]["source"] == "ehr"


async def test_same_event_three_times_gives_one_transition_and_three_successes(client, task_queue, store):
    rid = unique()
    order = happy_path(rid, datetime.now(timezone.utc))[0]
    async with running_api(client, store, task_queue) as api:
        async with api.client("ehr") as http:
            answers = [await http.post("/events/order_placed", json={"referral": rid, **body_of(order)}) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 200, 200]
        assert [a.json()["status"] for a in answers] == ["accepted", "duplicate", "duplicate"]
        view = await api.referral(rid, lambda r: r["stage"] == "ordered")
        assert [t["kind"] for t in view["timeline"]] == ["order_placed"]


async def test_event_without_referral_is_parked_by_its_keys_then_released(client, task_queue, store):
    rid = unique()
    now = datetime.now(timezone.utc)
    order, booking, *_ = happy_path(rid, now)
    acc = booking.identifiers.accession_number
    async with running_api(client, store, task_queue) as api:
        async with api.client("pacs") as http:
            # Only the accession names the referral: nobody knows it yet.
            parked = await http.post("/events/study_archived", json={"event_id": f"{rid}-st", "accession_number": acc, "instance_count": 7})
        assert parked.status_code == 202 and parked.json()["status"] == "parked"
        assert f"accession={acc}" in parked.json()["detail"]
        async with api.client("ehr") as http:
            assert (await http.post("/events/order_placed", json={"referral": rid, **body_of(order)})).status_code == 202
            assert (await http.post("/events/scheduled", json={"referral": rid, **body_of(booking)})).status_code == 202
        view = await api.referral(rid, lambda r: r["archived_instances"] == 7)
        assert view["stage"] == "archived"
        assert any(t["kind"] == "study_archived" and t["applied"] for t in view["timeline"])


async def test_arrival_by_patient_binds_only_a_loop_awaiting_arrival(client, task_queue, store):
    rid = unique()
    order, booking, arrival, *_ = happy_path(rid, datetime.now(timezone.utc))
    async with running_api(client, store, task_queue) as api:
        async with api.client("ris") as http:
            await http.post("/events/order_placed", json={"referral": rid, **body_of(order)})
            await http.post("/events/scheduled", json={"referral": rid, **body_of(booking)})
            await api.referral(rid, lambda r: r["stage"] == "scheduled")
            resp = await http.post("/events/arrived", json=body_of(arrival))  # no referral: the patient (ID + issuer) binds it
            assert resp.status_code == 202 and resp.json() == {"status": "accepted", "referral_id": rid, "detail": "", "first_status": None}
            other_issuer = {**body_of(arrival), "event_id": f"{rid}-arr2", "patient": {"value": arrival.patient.value, "issuer": "OTHER"}}
            resp = await http.post("/events/arrived", json=other_issuer)
            assert resp.status_code == 202 and resp.json()["status"] == "parked"  # same ID, other issuer: another patient
        await api.referral(rid, lambda r: r["stage"] == "arrived")


async def test_auth_and_invalid_bodies_are_problem_details(client, task_queue, store):
    rid = unique()
    order = body_of(happy_path(rid, datetime.now(timezone.utc))[0])
    async with running_api(client, store, task_queue) as api:
        async with api.client() as anonymous:
            missing = await anonymous.post("/events/order_placed", json={"referral": rid, **order})
            garbage_unauthenticated = await anonymous.post("/events/order_placed", content=b"{not json", headers={"content-type": "application/json"})
            read = await anonymous.get(f"/referrals/{rid}")
        for resp in (missing, garbage_unauthenticated, read):
            assert resp.status_code == 401 and resp.headers["content-type"] == PROBLEM
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert resp.json()["type"] == "urn:refloop:problem:missing-token" and resp.json()["status"] == 401
        async with api.client(token="not-a-token") as stranger:
            forbidden = await stranger.post("/events/order_placed", json={"referral": rid, **order})
        assert forbidden.status_code == 403 and forbidden.headers["content-type"] == PROBLEM
        assert forbidden.json()["type"] == "urn:refloop:problem:unknown-token"

        async with api.client("ehr") as http:
            no_event_id = await http.post("/events/order_placed", json={"referral": rid, "patient": {"id": {"value": "X"}}})
            bad_priority = await http.post("/events/order_placed", json={"referral": rid, **order, "service": {"priority": "whenever"}})
            not_json = await http.post("/events/scheduled", content=b"{not json", headers={"content-type": "application/json"})
            no_referral = await http.post("/events/report_issued", json={"event_id": f"{rid}-r", "status": "final"})
            unknown_kind = await http.post("/events/teleported", json={"referral": rid, "event_id": "x"})
            unknown_referral = await http.get("/referrals/NO-SUCH-REFERRAL")
        for resp in (no_event_id, bad_priority, not_json, no_referral):
            assert resp.status_code == 422, resp.text
            assert resp.headers["content-type"] == PROBLEM
        assert no_event_id.json()["type"] == "urn:refloop:problem:invalid-body"
        assert ["body", "event_id"] in [e["loc"] for e in no_event_id.json()["errors"]]
        assert any(e["loc"][-1] == "priority" for e in bad_priority.json()["errors"])
        assert no_referral.json()["type"] == "urn:refloop:problem:no-referral"
        assert "placer order number" in no_referral.json()["detail"]
        assert unknown_kind.status_code == 404 and unknown_kind.headers["content-type"] == PROBLEM
        assert unknown_referral.status_code == 404 and unknown_referral.json()["type"] == "urn:refloop:problem:unknown-referral"
        # Bad input from a known sender is kept; unauthenticated input is not.
        rejected = InboxStore(store.engine).list(status="rejected")
        assert {r.message_type for r in rejected} == {"order_placed", "scheduled", "report_issued"}
        assert all(r.sender == "ehr" and r.protocol == "json" for r in rejected)
        assert any("{not json" == r.raw for r in rejected)


async def test_temporal_unreachable_answers_503_and_the_retry_is_accepted(client, task_queue, store):
    rid = unique()
    order = body_of(happy_path(rid, datetime.now(timezone.utc))[0])
    dead_port = free_socket()  # bound, never listening: connections are refused
    dead = await Client.connect(
        f"127.0.0.1:{dead_port.getsockname()[1]}", lazy=True, data_converter=pydantic_data_converter,
        retry_config=RetryConfig(max_retries=1, max_elapsed_time_millis=1000),
    )
    app = create_app(Intake(dead, store, task_queue), store, settings_for(task_queue), handover_timeout=5)
    async with serving(app) as base:
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKENS['ehr']}"}) as http:
            resp = await http.post("/events/order_placed", json={"referral": rid, **order})
            fhir = await http.post("/fhir/ServiceRequest", json={"resourceType": "ServiceRequest", "id": rid, "status": "active", "intent": "order", "subject": {"reference": "Patient/p"}})
    dead_port.close()
    assert fhir.status_code == 503 and fhir.headers["content-type"] == "application/fhir+json"
    assert fhir.json()["issue"][0]["code"] == "transient" and fhir.headers["retry-after"] == "5"
    assert resp.status_code == 503 and resp.headers["content-type"] == PROBLEM
    assert resp.headers["retry-after"] == "5"
    assert resp.json()["type"] == "urn:refloop:problem:engine-unavailable"
    kept = InboxStore(store.engine).list()
    assert sorted((r.protocol, r.status) for r in kept) == [("fhir", "failed"), ("json", "failed")]
    assert order["event_id"] in {r.message_key for r in kept}
    # Temporal is back: the sender's retry goes through, and is not taken for a duplicate.
    async with running_api(client, store, task_queue) as api:
        async with api.client("ehr") as http:
            retry = await http.post("/events/order_placed", json={"referral": rid, **order})
        assert retry.status_code == 202 and retry.json()["status"] == "accepted"
        await api.referral(rid, lambda r: r["stage"] == "ordered")


async def test_without_tokens_the_api_is_open_only_on_loopback(client, task_queue, store):
    rid = unique()
    order = body_of(happy_path(rid, datetime.now(timezone.utc))[0])
    with pytest.raises(AuthNotConfigured):
        create_app(Intake(client, store, task_queue), store, settings_for(task_queue, tokens=None, bind_host="0.0.0.0"))
    async with running_api(client, store, task_queue, tokens=None) as api:
        async with api.client() as http:
            resp = await http.post("/events/order_placed", json={"referral": rid, **order})
        assert resp.status_code == 202
        view = await api.referral(rid, lambda r: r["stage"] == "ordered")
        assert view["timeline"][0]["source"] == "dev"


async def test_openapi_has_one_operation_per_event_kind_and_the_fhir_routes(client, task_queue, store):
    async with running_api(client, store, task_queue) as api:
        async with api.client() as http:
            docs = await http.get("/docs")
            spec = (await http.get("/openapi.json")).json()
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    for kind in EVENT_KINDS:
        op = spec["paths"][f"/events/{kind}"]["post"]
        assert op["operationId"] == f"post_{kind}"
        schema = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        props = spec["components"]["schemas"][schema]["properties"]
        assert {"referral", "correlation", "event_id"} <= set(props) and "source" not in props
    for resource in ("ServiceRequest", "Appointment", "Encounter", "ImagingStudy", "DiagnosticReport", "Task"):
        assert "post" in spec["paths"][f"/fhir/{resource}"]
    assert "get" in spec["paths"]["/referrals/{ident}"] and "post" in spec["paths"]["/referrals/{ident}/acknowledgment"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_serve_runs_the_gateway_until_stopped(client, task_queue, tmp_path):
    port_holder = free_socket()
    port = port_holder.getsockname()[1]
    port_holder.close()
    settings = Settings(
        data_dir=tmp_path, temporal_address=client.service_client.config.target_host, task_queue=task_queue,
        bind_host="127.0.0.1", http_port=port, api_tokens="ehr=tok-ehr",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for _ in range(200):
            try:
                if (await http.get("/health")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        assert (await http.get("/docs")).status_code == 200
        assert (await http.get("/referrals/X", headers={"Authorization": "Bearer tok-ehr"})).status_code == 404
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    from refloop.cli.dev import DEV_SERVICES

    assert "refloop.gateways.http.server:serve" in DEV_SERVICES


async def test_extra_routers_are_mounted_behind_the_same_tokens(client, task_queue, store):
    worklist = APIRouter(prefix="/worklist", tags=["worklist"])

    @worklist.get("/whoami")
    async def whoami(request: Request, system: str = Depends(current_system)) -> dict:
        return {"system": system, "loops": len(request.app.state.store.loops())}

    async with running_api(client, store, task_queue, routers=[worklist]) as api:
        async with api.client() as anonymous:
            assert (await anonymous.get("/worklist/whoami")).status_code == 401
        async with api.client("reporting") as http:
            resp = await http.get("/worklist/whoami")
            spec = (await http.get("/openapi.json")).json()
    assert resp.status_code == 200 and resp.json() == {"system": "reporting", "loops": 0}
    assert "/worklist/whoami" in spec["paths"]
