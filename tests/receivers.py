"""Requester endpoints started by tests: a FHIR REST receiver (FastAPI on uvicorn) and an HL7
MLLP receiver (python-hl7), both on free loopback ports, with scripted failures."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import hl7
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from hl7.mllp import start_hl7_server

HANG = "hang"


@dataclass
class Hit:
    resource_type: str
    resource_id: str
    body: dict
    status: int | str  # the answer we gave, or "hang"
    at: float = field(default_factory=time.monotonic)


class FhirReceiver:
    """`PUT /fhir/{type}/{id}`. `script[type]` lists answers to give before succeeding:
    an HTTP status, or HANG (never answer). Also a webhook: `POST /hook`."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.posts: list[dict] = []  # JSON posted to the webhook
        self.script: dict[str, list[int | str]] = {}
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.port = 0
        app = FastAPI()

        @app.put("/fhir/{resource_type}/{resource_id}")
        async def put(resource_type: str, resource_id: str, request: Request):
            body = await request.json()
            todo = self.script.get(resource_type) or []
            answer: int | str = todo.pop(0) if todo else 200
            self.hits.append(Hit(resource_type, resource_id, body, answer))
            if answer == HANG:
                await asyncio.sleep(3600)
            if isinstance(answer, int) and answer >= 400:
                outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": f"scripted {answer}"}]}
                return JSONResponse(outcome, status_code=answer, media_type="application/fhir+json")
            return JSONResponse(body, status_code=200, media_type="application/fhir+json")

        @app.post("/hook")
        async def hook(request: Request):
            self.posts.append(await request.json())
            return {"ok": True}

        self.app = app

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def webhook(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def accepted(self, resource_type: str) -> list[dict]:
        """Bodies the receiver took (answered 2xx), in arrival order."""
        return [h.body for h in self.hits if h.resource_type == resource_type and h.status == 200]

    def tried(self, resource_type: str) -> list[Hit]:
        return [h for h in self.hits if h.resource_type == resource_type]

    async def __aenter__(self) -> FhirReceiver:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server and self._task
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 5)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()


class MllpReceiver:
    """An HL7 requester: ACKs every message with AA unless `script` (a list of ACK codes) says otherwise."""

    def __init__(self) -> None:
        self.messages: list[hl7.Message] = []
        self.acks: list[str] = []
        self.script: list[str] = []
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def of_type(self, message_type: str) -> list[hl7.Message]:
        return [m for m, ack in zip(self.messages, self.acks) if str(m.segment("MSH")(9)).startswith(message_type) and ack == "AA"]

    async def _handle(self, reader, writer) -> None:
        try:
            while True:
                msg = await reader.readmessage()
                code = self.script.pop(0) if self.script else "AA"
                self.messages.append(msg)
                self.acks.append(code)
                ack = msg.create_ack(code)
                if code != "AA":
                    ack = hl7.parse(str(ack).rstrip("\r") + "\rERR|||207^Application internal error^HL70357|E||||scripted " + code)
                writer.writemessage(ack)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> MllpReceiver:
        self._server = await start_hl7_server(self._handle, "127.0.0.1", 0, encoding="utf-8")
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server
        self._server.close()
        await self._server.wait_closed()


async def eventually(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll until `predicate()` (sync or async) is truthy; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)
