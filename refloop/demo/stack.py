"""The embedded stack for the demo: a fresh in-memory Temporal dev server with its UI, and
`refloop dev`'s worker and gateways (`run_stack`), all on loopback, with the demo's settings:
its own SQLite, its policy, results of HL7-placed orders to the demo EHR, escalations to its pager."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from refloop.cli.dev import run_stack
from refloop.config import Settings
from refloop.demo.day import POLICY
from refloop.demo.messages import PLACER_APPLICATIONS
from refloop.demo.modality import Modality
from refloop.devserver import start_dev_server, wait_for_ui

HOST = "127.0.0.1"
SYSTEMS = ("ehr", "ris", "pacs")  # HTTP API callers, each with its own token


class StackError(Exception):
    """The stack cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class Ports:
    temporal: int
    ui: int
    http: int
    mllp: int
    dicom: int

    def check_free(self) -> None:
        busy = []
        for name, port in vars(self).items():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a listener, not TIME_WAIT, makes it busy
                try:
                    s.bind((HOST, port))
                except OSError:
                    busy.append(f"{name} {port}")
        if busy:
            raise StackError(
                f"port(s) in use on {HOST}: {', '.join(busy)}. Is `refloop dev` or another demo running? "
                "Stop it, or give the demo other ports (refloop demo --help)."
            )


def demo_settings(data_dir: Path, ports: Ports, ehr_base: str, pager: str, tokens: dict[str, str]) -> Settings:
    """The environment's settings (AE title, time zone...), with what the demo must own."""
    s = Settings()
    s.data_dir = data_dir
    s.database_url = f"sqlite:///{data_dir.resolve() / 'refloop.db'}"
    s.temporal_address, s.namespace = f"{HOST}:{ports.temporal}", "default"
    s.bind_host, s.http_port, s.mllp_port, s.dicom_port = HOST, ports.http, ports.mllp, ports.dicom
    s.policy_file = str(POLICY)
    s.api_tokens = ",".join(f"{system}={token}" for system, token in tokens.items())
    s.hl7_result_endpoints = ",".join(f"{app}={ehr_base}/fhir" for app in PLACER_APPLICATIONS)
    s.escalation_webhook, s.operations_webhook, s.reading_webhook = pager, "", ""
    s.orthanc_url = ""  # the day's archive speaks FHIR (ImagingStudy); no Orthanc needed
    s.outbox_poll = 0.25
    return s


def new_tokens() -> dict[str, str]:
    return {system: secrets.token_urlsafe(16) for system in SYSTEMS}


class Stack:
    def __init__(self, settings: Settings, ports: Ports):
        self.settings, self.ports = settings, ports
        self.server: subprocess.Popen | None = None
        self._server_log = None
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task | None = None

    @property
    def ui(self) -> str:
        return f"http://{HOST}:{self.ports.ui}"

    async def start(self) -> None:
        self._server_log = open(self.settings.data_dir / "temporal.log", "wb")
        try:
            self.server = start_dev_server(self.ports.temporal, self.ports.ui, None, log=self._server_log)  # in memory: a fresh day
        except FileNotFoundError as err:
            raise StackError(f"{err}; run scripts/setup first") from None
        if not await asyncio.to_thread(wait_for_ui, self.ports.ui):
            raise StackError(f"Temporal did not start; see {self.settings.data_dir / 'temporal.log'}")
        self.task = asyncio.create_task(run_stack(self.settings, self.stop_event), name="refloop-stack")
        await self._ready()

    async def _ready(self, timeout: float = 60) -> None:
        """The gateways answer: HTTP /health, an MLLP connection, a DICOM C-ECHO."""
        deadline = asyncio.get_running_loop().time() + timeout
        s = self.settings
        pending = {"HTTP": self._http_up, "MLLP": self._mllp_up, "DICOM": self._dicom_up}
        while pending:
            for name, check in list(pending.items()):
                if await check():
                    del pending[name]
            if self.task is not None and self.task.done():
                self.task.result()  # a service that failed to start says why
                raise StackError("the refloop stack stopped while starting")
            if pending and asyncio.get_running_loop().time() > deadline:
                raise StackError(f"{', '.join(pending)} gateway(s) did not come up on {s.bind_host}; see {s.data_dir / 'demo.log'}")
            await asyncio.sleep(0.1)

    async def _http_up(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as http:
                return (await http.get(f"http://{HOST}:{self.settings.http_port}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _mllp_up(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(HOST, self.settings.mllp_port)
        except OSError:
            return False
        writer.close()
        return True

    async def _dicom_up(self) -> bool:
        try:
            return await asyncio.to_thread(Modality(self.settings.dicom_port, called=self.settings.dicom_ae_title, calling="DEMOECHO").echo) == 0
        except (ConnectionError, OSError):
            return False

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 30)
            except Exception:  # noqa: BLE001 - stopping: what failed is in the log already
                pass
        if self.server is not None:
            self.server.terminate()
            try:
                await asyncio.to_thread(self.server.wait, 10)
            except subprocess.TimeoutExpired:
                self.server.kill()
        if self._server_log is not None:
            self._server_log.close()
