"""`serve(settings, stop)`: the HTTP gateway as a `refloop dev` service (uvicorn, until `stop` is set)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
from collections.abc import AsyncIterator, Sequence

import structlog
import uvicorn
from fastapi import APIRouter

from refloop.config import Settings
from refloop.gateways.http.app import create_app
from refloop.gateways.intake import Intake
from refloop.store.db import make_engine
from refloop.store.repo import Store

log = structlog.get_logger()

# Extra routers `serve` mounts: "module:attribute", each an APIRouter (e.g. the reporting worklist).
EXTRA_ROUTERS: list[str] = ["refloop.gateways.worklist:router"]


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the caller's stop event decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


def load_routers(specs: Sequence[str]) -> list[APIRouter]:
    out = []
    for spec in specs:
        module, attr = spec.split(":")
        out.append(getattr(importlib.import_module(module), attr))
    return out


async def serve(settings: Settings, stop: asyncio.Event, routers: Sequence[APIRouter] | None = None) -> None:
    from refloop.temporal import connect

    client = await connect(settings.temporal_address, settings.namespace)
    store = Store(make_engine(settings.db_url))
    intake = Intake(client, store, settings.task_queue, settings.policy())
    app = create_app(intake, store, settings, routers=load_routers(EXTRA_ROUTERS) if routers is None else routers)
    server = EmbeddedServer(uvicorn.Config(app, host=settings.bind_host, port=settings.http_port, log_config=None, lifespan="off"))
    await run_until(server, stop)


async def run_until(server: uvicorn.Server, stop: asyncio.Event) -> None:
    """Run `server` until `stop` is set; a server that cannot start raises instead of exiting the process."""
    log.info("http_gateway_starting", host=server.config.host, port=server.config.port)
    task = asyncio.create_task(_serve(server))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    waiter.cancel()
    await task


async def _serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as err:  # uvicorn exits the process when it cannot bind
        raise RuntimeError(f"HTTP gateway could not start on {server.config.host}:{server.config.port}") from err


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextlib.asynccontextmanager
async def serving(app, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """uvicorn serving `app` on a free port of `host` (loopback by default); yields the base URL."""
    sock = free_socket(host)
    server = EmbeddedServer(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()
