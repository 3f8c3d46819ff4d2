"""The refloop worker: runs ReferralWorkflow and its activities. Stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from activities.delivery import DeliveryActivities
from activities.escalation import EscalationActivities
from activities.store import StoreActivities
from refloop.config import Settings
from refloop.store.db import make_engine
from refloop.store.repo import Store
from workflows.referral import ReferralWorkflow

log = structlog.get_logger()


def build_worker(client: Client, settings: Settings, store: Store, **options) -> Worker:
    store_acts = StoreActivities(store)
    escalation = EscalationActivities(store, settings.escalation_webhook)
    delivery = DeliveryActivities(store)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[ReferralWorkflow],
        activities=[store_acts.persist_loop, escalation.notify_escalation, delivery.deliver_result],
        activity_executor=ThreadPoolExecutor(max_workers=16),
        graceful_shutdown_timeout=options.pop("graceful_shutdown_timeout", timedelta(seconds=10)),
        **options,
    )


async def run(settings: Settings | None = None, stop: asyncio.Event | None = None) -> None:
    from refloop.temporal import connect

    settings = settings or Settings()
    client = await connect(settings.temporal_address, settings.namespace)
    store = Store(make_engine(settings.db_url))
    worker = build_worker(client, settings, store)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    async with worker:
        log.info("worker_started", task_queue=settings.task_queue, temporal=settings.temporal_address)
        await stop.wait()
        log.info("worker_stopping")
    log.info("worker_stopped")


def main() -> None:
    from refloop.logs import configure

    configure()
    asyncio.run(run())


if __name__ == "__main__":
    main()
