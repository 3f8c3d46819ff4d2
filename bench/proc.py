"""Processes the harness starts, so each one's RSS and CPU are its own:
`python -m bench.proc worker product|baseline` and `python -m bench.proc service MODULE:FUNC`.
Each prints `ready` on stdout once it serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys

from refloop.config import Settings


async def _until_stopped(run) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(stop)


async def product_worker(settings: Settings, stop: asyncio.Event) -> None:
    """The product's worker exactly as `refloop worker` builds it."""
    from refloop.store.db import make_engine
    from refloop.store.repo import Store
    from refloop.temporal import connect
    from workers.main import build_worker

    client = await connect(settings.temporal_address, settings.namespace)
    # Tuning experiments: extra Worker keyword arguments as JSON.
    options = json.loads(os.environ.get("REFLOOP_BENCH_WORKER_OPTIONS", "{}"))
    await _serve(build_worker(client, settings, Store(make_engine(settings.db_url)), **options), stop)


async def baseline_worker(settings: Settings, stop: asyncio.Event) -> None:
    """The baseline's worker with Temporal's default settings."""
    from temporalio.worker import Worker

    from bench.baseline import BaselineWorkflow, touch
    from refloop.temporal import connect

    client = await connect(settings.temporal_address, settings.namespace)
    await _serve(Worker(client, task_queue=settings.task_queue, workflows=[BaselineWorkflow], activities=[touch]), stop)


async def _serve(worker, stop: asyncio.Event) -> None:
    """Run until stopped; a worker that dies (fatal error) ends the process with an error,
    so the harness sees it instead of measuring a process that no longer polls."""
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(0)
    print("ready", flush=True)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        running.result()  # raises the worker's fatal error
        raise SystemExit("worker stopped on its own")
    await worker.shutdown()
    await running


async def service(spec: str, settings: Settings, stop: asyncio.Event) -> None:
    """A `refloop dev` service (`async def serve(settings, stop)`), e.g. a gateway."""
    module, func = spec.split(":")
    serve = getattr(importlib.import_module(module), func)
    await serve(settings, stop)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.proc")
    p.add_argument("role", choices=["worker", "service"])
    p.add_argument("what", help="product | baseline | MODULE:FUNC")
    a = p.parse_args(argv)
    settings = Settings()  # REFLOOP_* from the environment the harness sets
    from refloop.logs import configure

    configure(level="WARNING")
    if a.role == "worker":
        run = {"product": product_worker, "baseline": baseline_worker}[a.what]
        asyncio.run(_until_stopped(lambda stop: run(settings, stop)))
    else:
        asyncio.run(_until_stopped(lambda stop: service(a.what, settings, stop)))


if __name__ == "__main__":
    main(sys.argv[1:])
