"""Delivering results (or the reason there is none) to the requester."""

from __future__ import annotations

import httpx
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import DeliveryRequest, DeliveryResult
from refloop.store.repo import Store

log = structlog.get_logger()


class DeliveryActivities:
    def __init__(self, store: Store, http: httpx.AsyncClient | None = None):
        self.store = store
        self.http = http or httpx.AsyncClient(timeout=15)

    @activity.defn(name="deliver_result")
    async def deliver_result(self, req: DeliveryRequest) -> DeliveryResult:
        requester = req.loop.referral.requester
        if not requester.endpoint:
            # Nobody to send to: the loop waits (and escalates) until delivery is reported.
            return DeliveryResult(delivered=False, detail="requester has no endpoint")
        payload = {"referral_id": req.loop.referral.referral_id, "what": req.what, "version": req.version}
        resp = await self.http.post(requester.endpoint, json=payload)
        if 400 <= resp.status_code < 500:
            raise ApplicationError(f"requester refused delivery: HTTP {resp.status_code}", non_retryable=True)
        resp.raise_for_status()
        return DeliveryResult(delivered=True, channel="http", detail=f"HTTP {resp.status_code}")
