"""`refloop dev`, `refloop worker` and `refloop gateway`: run the embedded stack, or its parts."""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from pathlib import Path

import structlog

from refloop.config import Settings

log = structlog.get_logger()

# Services `refloop dev` runs beside the worker: "module:function", each an
# `async def serve(settings, stop: asyncio.Event)` that returns once `stop` is set.
DEV_SERVICES: list[str] = [
    "refloop.gateways.http.server:serve",  # HTTP on REFLOOP_BIND_HOST:REFLOOP_HTTP_PORT (8000)
    "refloop.gateways.hl7.server:serve",  # MLLP on REFLOOP_BIND_HOST:REFLOOP_MLLP_PORT (2575)
    "refloop.gateways.dicom.server:serve",  # MWL + MPPS (+ C-ECHO) on REFLOOP_DICOM_PORT
    "refloop.gateways.orthanc:serve",  # only when REFLOOP_ORTHANC_URL is set
    "refloop.gateways.worklist:serve_reading_notifier",  # only when REFLOOP_READING_WEBHOOK is set
]


def register(sub) -> None:
    p = sub.add_parser("dev", help="start Temporal (with UI), the worker and the gateways; Ctrl-C stops all")
    p.add_argument("--port", type=int, default=7233, help="Temporal gRPC port")
    p.add_argument("--ui-port", type=int, default=8233)
    p.add_argument("--no-temporal", action="store_true", help="use a Temporal already running at REFLOOP_TEMPORAL_ADDRESS")
    p.set_defaults(func=cmd_dev)
    w = sub.add_parser("worker", help="run only the worker (production)")
    w.set_defaults(func=lambda a: _run(lambda s, stop: _worker(s, stop)))
    g = sub.add_parser("gateway", help="run only the gateways (DEV_SERVICES) against REFLOOP_TEMPORAL_ADDRESS (production)")
    g.set_defaults(func=lambda a: _run(lambda s, stop: run_stack(s, stop, worker=False)))


async def _worker(settings: Settings, stop: asyncio.Event) -> None:
    from workers.main import run

    await run(settings, stop)


def _run(main) -> int:
    from refloop.logs import configure

    configure(json=False)
    settings = Settings()

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(settings, stop)

    asyncio.run(go())
    return 0


async def run_stack(settings: Settings, stop: asyncio.Event, services: list[str] | None = None, worker: bool = True) -> None:
    """The worker plus every dev service, until `stop` is set (`worker=False`: the gateways only,
    as `refloop gateway` runs them beside workers elsewhere)."""
    tasks = [asyncio.create_task(_worker(settings, stop), name="worker")] if worker else []
    for spec in services if services is not None else DEV_SERVICES:
        module, func = spec.split(":")
        serve = getattr(importlib.import_module(module), func)
        tasks.append(asyncio.create_task(serve(settings, stop), name=spec))
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for t in done:
        if t.exception():
            stop.set()
            raise t.exception()  # type: ignore[misc]
    await asyncio.gather(*tasks)


def cmd_dev(args) -> int:
    from refloop.devserver import start_dev_server, wait_for_ui
    from refloop.logs import configure

    configure(json=False)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = None
    if not args.no_temporal:
        settings.temporal_address = f"127.0.0.1:{args.port}"
        log_file = open(Path(settings.data_dir) / "temporal.log", "ab")
        server = start_dev_server(args.port, args.ui_port, settings.data_dir / "temporal.db", log=log_file)
        if not wait_for_ui(args.ui_port):
            server.terminate()
            print(f"Temporal did not start; see {settings.data_dir / 'temporal.log'}", file=sys.stderr)
            return 1
        print(f"Temporal UI: http://127.0.0.1:{args.ui_port}/namespaces/default/workflows", flush=True)
    print(f"SQL store: {settings.db_url}", flush=True)
    try:
        _run_until_interrupted(settings)
    finally:
        if server:
            server.terminate()
            try:
                server.wait(timeout=10)
            except Exception:
                server.kill()
    return 0


def _run_until_interrupted(settings: Settings) -> None:
    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("refloop dev is running; Ctrl-C stops it.", flush=True)
        await run_stack(settings, stop)

    asyncio.run(go())
