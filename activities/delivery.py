"""Delivering the result (or its retraction, or the reason there is none) to the requester.

FHIR requesters get a DiagnosticReport PUT at their FHIR base URL; HL7 requesters an ORU^R01
over MLLP. Every attempt is recorded in SQL. Retries and backoff are Temporal's (the
workflow's retry policy); a refusal (HTTP 4xx, HL7 AE) is non-retryable, so the workflow
records an anomaly and escalates at once instead of retrying in vain.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import DeliveryRequest, DeliveryResult
from refloop.outbound.fhir import diagnostic_report
from refloop.outbound.hl7v2 import oru_r01
from refloop.outbound.transport import Refused, Sent, Unavailable, put_resource, send_mllp
from refloop.store.outbox import DeliveryLog
from refloop.store.repo import Store

log = structlog.get_logger()

DEFAULT_ATTEMPT_TIMEOUT = 15.0


def attempt_timeout() -> float:
    """Give up on the requester a little before Temporal gives up on us, so the attempt is recorded."""
    limit = activity.info().start_to_close_timeout
    return limit.total_seconds() * 0.8 if limit else DEFAULT_ATTEMPT_TIMEOUT


class DeliveryActivities:
    def __init__(self, store: Store, department: str = "Imaging department", http: httpx.AsyncClient | None = None):
        self.log = DeliveryLog(store.engine)
        self.department = department
        self.http = http or httpx.AsyncClient()

    @activity.defn(name="deliver_result")
    async def deliver_result(self, req: DeliveryRequest) -> DeliveryResult:
        info = activity.info()
        loop = req.loop
        requester = loop.referral.requester
        attempt = dict(
            referral_id=loop.referral.referral_id,
            what=req.what,
            version=req.version,
            attempt=info.attempt,
            delivery=f"{info.workflow_run_id}/{info.activity_id}",
            channel=requester.channel,
            endpoint=requester.endpoint,
        )
        if not requester.endpoint:
            # Nobody to send to: the loop waits (and escalates) until a delivery is reported.
            await asyncio.to_thread(self.log.record, **attempt, ok=False, error="requester has no endpoint")
            return DeliveryResult(delivered=False, detail="requester has no endpoint")
        try:
            sent = await self._send(req)
        except Refused as err:
            await asyncio.to_thread(self.log.record, **attempt, ok=False, status_code=err.status_code, error=str(err))
            log.warning("delivery_refused", referral_id=loop.referral.referral_id, what=req.what, attempt=info.attempt, error=str(err))
            raise ApplicationError(str(err), type="DeliveryRefused", non_retryable=True) from None
        except Unavailable as err:
            await asyncio.to_thread(self.log.record, **attempt, ok=False, status_code=err.status_code, error=str(err))
            log.info("delivery_retry", referral_id=loop.referral.referral_id, what=req.what, attempt=info.attempt, error=str(err))
            raise ApplicationError(str(err), type="DeliveryUnavailable") from None
        except Exception as err:  # our own bug: recorded, retried by Temporal, visible in the UI
            await asyncio.to_thread(self.log.record, **attempt, ok=False, error=f"{type(err).__name__}: {err}")
            raise
        await asyncio.to_thread(self.log.record, **attempt, ok=True, status_code=sent.status_code, error="")
        log.info("delivered", referral_id=loop.referral.referral_id, what=req.what, version=req.version, channel=sent.channel)
        return DeliveryResult(delivered=True, channel=sent.channel, detail=sent.detail)

    async def _send(self, req: DeliveryRequest) -> Sent:
        requester = req.loop.referral.requester
        timeout = attempt_timeout()
        if requester.channel == "hl7":
            message = oru_r01(req.loop, req.what, req.version, self.department, datetime.now(timezone.utc))
            return await send_mllp(requester.endpoint, message, timeout)
        if requester.channel == "fhir":
            report = diagnostic_report(req.loop, req.what, req.version, self.department)
            return await put_resource(self.http, requester.endpoint, report, timeout)
        raise Refused(f"unknown requester channel {requester.channel!r} (fhir or hl7)")
