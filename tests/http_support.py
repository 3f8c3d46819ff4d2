"""Run the HTTP gateway for a test: real uvicorn on a free loopback port, a real worker, httpx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from refloop.config import Settings
from refloop.demo.rekey import rekey_json as rekey  # noqa: F401 (shared with the demo)
from refloop.gateways.http import create_app
from refloop.gateways.http.server import free_socket, serving  # noqa: F401 (shared with the demo)
from refloop.gateways.intake import Intake
from refloop.store.repo import Store
from tests.conftest import SAMPLES
from workers.main import build_worker

FHIR_SAMPLES = SAMPLES / "fhir-r4"
TOKENS = {"ehr": "tok-ehr", "ris": "tok-ris", "pacs": "tok-pacs", "reporting": "tok-reporting"}


def settings_for(task_queue: str, tokens: dict[str, str] | None = TOKENS, bind_host: str = "127.0.0.1") -> Settings:
    api_tokens = ",".join(f"{system}={token}" for system, token in (tokens or {}).items())
    return Settings(task_queue=task_queue, api_tokens=api_tokens, bind_host=bind_host)


@dataclass
class Api:
    base: str
    store: Store

    def client(self, system: str | None = None, token: str | None = None) -> httpx.AsyncClient:
        headers = {}
        if system:
            headers["Authorization"] = f"Bearer {TOKENS[system]}"
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=30)

    async def referral(self, ident: str, until: Callable[[dict], bool] = lambda r: True, timeout: float = 15.0) -> dict:
        """GET /referrals/{ident} until `until` holds (the read model follows the workflow shortly)."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with self.client("ehr") as http:
            while True:
                resp = await http.get(f"/referrals/{ident}")
                if resp.status_code == 200 and until(resp.json()):
                    return resp.json()
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"referral {ident}: last answer {resp.status_code} {resp.text[:2000]}")
                await asyncio.sleep(0.1)


@asynccontextmanager
async def running_api(client: Client, store: Store, task_queue: str, **app_kw: Any) -> AsyncIterator[Api]:
    """A worker on `task_queue` plus the HTTP gateway in front of the intake."""
    settings = settings_for(task_queue, **{k: app_kw.pop(k) for k in ("tokens", "bind_host") if k in app_kw})
    app = create_app(Intake(client, store, task_queue), store, settings, **app_kw)
    async with build_worker(client, settings, store):
        async with serving(app) as base:
            yield Api(base, store)


def sample(name: str) -> dict:
    return json.loads((FHIR_SAMPLES / name).read_text())


def outcome_code(body: dict) -> str:
    """The intake status an OperationOutcome carries (accepted, parked, duplicate, ...)."""
    details = body["issue"][0].get("details", {})
    return details.get("coding", [{}])[0].get("code", "")


def sample_files() -> list[Path]:
    return sorted(FHIR_SAMPLES.glob("*.json")) + sorted((FHIR_SAMPLES / "v2-tables").glob("*.json"))
