"""Escalation notifications: POST to the configured webhook, or log when none is set."""

from __future__ import annotations

import asyncio

import httpx
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import EscalationRequest
from refloop.store.repo import Store

log = structlog.get_logger()


class EscalationActivities:
    def __init__(self, store: Store, webhook_url: str = "", http: httpx.AsyncClient | None = None):
        self.store = store
        self.webhook_url = webhook_url
        self.http = http or httpx.AsyncClient(timeout=10)

    @activity.defn(name="notify_escalation")
    async def notify_escalation(self, req: EscalationRequest) -> str:
        info = activity.info()
        log.warning(
            "loop_escalated",
            referral_id=req.referral_id,
            level=req.level,
            level_name=req.level_name,
            stage=req.stage,
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
        )
        notified = "log"
        if self.webhook_url:
            resp = await self.http.post(self.webhook_url, json=req.model_dump(mode="json"))
            if 400 <= resp.status_code < 500:
                raise ApplicationError(f"escalation webhook refused: HTTP {resp.status_code}", non_retryable=True)
            resp.raise_for_status()
            notified = "webhook"
        await asyncio.to_thread(self.store.record_escalation_notified, req.referral_id, req.seq, notified)
        return notified
