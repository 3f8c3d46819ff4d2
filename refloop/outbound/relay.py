"""The outbox relay: sends the requester the milestones the workflow wrote to the `outbox`.

Runs beside each worker (started by `workers.main.run`): it needs the same database, lives and
dies with the worker process, and several relays cooperate through row claims, so no extra
process has to be deployed or watched. Per referral, messages go strictly in order: a row is
sent only once every earlier row of that referral is sent, failed for good, or skipped.
FHIR requesters get their order's Task updated (PUT, idempotent); HL7 requesters an ORM^O01
with ORC-1 SC and the ORC-5 of the loop's stage at that milestone.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import httpx
import structlog

from refloop.outbound.fhir import status_task
from refloop.outbound.hl7v2 import order_status_message
from refloop.outbound.transport import Refused, Unavailable, put_resource, send_mllp
from refloop.store.outbox import OutboxStore
from refloop.store.repo import Store
from refloop.store.tables import OutboxRow

log = structlog.get_logger()


class OutboxRelay:
    def __init__(
        self,
        store: Store,
        department: str = "Imaging department",
        *,
        poll_interval: float = 1.0,
        timeout: float = 15.0,
        max_attempts: int = 10,
        first_retry: timedelta = timedelta(seconds=2),
        max_retry: timedelta = timedelta(minutes=5),
        batch: int = 50,
        http: httpx.AsyncClient | None = None,
    ):
        self.store = store
        self.outbox = OutboxStore(store.engine)
        self.department = department
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.batch = batch
        # A claim outlives one send attempt; an expired claim (crashed relay) is taken over.
        self.lease = timedelta(seconds=timeout * 2 + 5)
        self.http = http or httpx.AsyncClient()

    async def run(self, stop: asyncio.Event) -> None:
        log.info("outbox_relay_started", poll_interval=self.poll_interval)
        while not stop.is_set():
            try:
                sent = await self.relay_once()
            except Exception as err:  # the database may be briefly away; never die for it
                log.warning("outbox_relay_error", error=str(err))
                sent = 0
            if sent == 0:
                try:
                    await asyncio.wait_for(stop.wait(), self.poll_interval)
                except TimeoutError:
                    pass
        log.info("outbox_relay_stopped")

    async def relay_once(self) -> int:
        """Send the due head message of each referral's queue; returns how many were handled."""
        rows = await asyncio.to_thread(self.outbox.claim_heads, self.lease, self.batch)
        await asyncio.gather(*(self._handle(row) for row in rows))
        return len(rows)

    async def _handle(self, row: OutboxRow) -> None:
        try:
            await self._send(row)
        except Refused as err:
            await asyncio.to_thread(self.outbox.mark_failed, row, str(err))
            log.warning("status_refused", referral_id=row.referral_id, seq=row.seq, error=str(err))
        except Exception as err:
            error = str(err) if isinstance(err, Unavailable) else f"{type(err).__name__}: {err}"
            if row.attempts >= self.max_attempts:
                await asyncio.to_thread(self.outbox.mark_failed, row, error)
                log.warning("status_gave_up", referral_id=row.referral_id, seq=row.seq, attempts=row.attempts, error=error)
                return
            delay = min(self.first_retry * (2 ** (row.attempts - 1)), self.max_retry)
            await asyncio.to_thread(self.outbox.mark_retry, row, error, datetime.now(timezone.utc) + delay)
            log.info("status_retry", referral_id=row.referral_id, seq=row.seq, attempts=row.attempts, error=error)

    async def _send(self, row: OutboxRow) -> None:
        loop = await asyncio.to_thread(self.store.get_loop, row.referral_id)
        if loop is None:  # written in the same transaction as the row: should not happen
            raise Refused(f"no loop {row.referral_id} in the store")
        requester = loop.referral.requester
        if not requester.endpoint:
            await asyncio.to_thread(self.outbox.mark_skipped, row, "requester has no endpoint")
            return
        payload = json.loads(row.payload_json)
        if requester.channel == "hl7":
            message = order_status_message(loop.referral, payload, row.seq, self.department, datetime.now(timezone.utc))
            await send_mllp(requester.endpoint, message, self.timeout)
        elif requester.channel == "fhir":
            await put_resource(self.http, requester.endpoint, status_task(loop.referral, payload, self.department), self.timeout)
        else:
            raise Refused(f"unknown requester channel {requester.channel!r}")
        await asyncio.to_thread(self.outbox.mark_sent, row)
        log.info("status_sent", referral_id=row.referral_id, seq=row.seq, milestone=payload.get("milestone"), channel=requester.channel)

