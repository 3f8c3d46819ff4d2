"""The escalation sweep's activities: find stale loops through visibility, keep the digest, post it."""

from __future__ import annotations

import asyncio

import httpx
import structlog
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.contracts import FindStaleRequest, FindStaleResult, StaleLoop, SweepDigest
from refloop.store.digests import DigestStore
from refloop.store.repo import Store
from refloop.store.tables import SweepDigestRow
from refloop.visibility import find_loops, loops_query

log = structlog.get_logger()


class SweepActivities:
    def __init__(self, client: Client, store: Store, webhook_url: str = "", http: httpx.AsyncClient | None = None):
        self.client = client
        self.digests = DigestStore(store.engine)
        self.webhook_url = webhook_url
        self.http = http or httpx.AsyncClient(timeout=10)

    @activity.defn(name="find_stale_loops")
    async def find_stale_loops(self, req: FindStaleRequest) -> FindStaleResult:
        # The server filters: only overdue, escalated or flagged loops come back.
        query = loops_query(task_queue=req.task_queue, stale_at=req.now, attention=True, either=True)
        found, truncated = await find_loops(self.client, query, req.limit)
        loops = [StaleLoop(**f.model_dump(), reasons=f.stale_reasons(req.now)) for f in found]
        # Visibility may lag a just-moved deadline: keep only loops still stale by our own clock.
        loops = [loop for loop in loops if loop.reasons]
        return FindStaleResult(loops=loops, truncated=truncated)

    @activity.defn(name="record_sweep_digest")
    def record_sweep_digest(self, digest: SweepDigest) -> int:
        return self.digests.record(
            SweepDigestRow(
                sweep_id=digest.sweep_id,
                swept_at=digest.swept_at,
                task_queue=digest.task_queue,
                stale=len(digest.loops),
                overdue=digest.count("overdue"),
                escalated=digest.count("escalated"),
                attention=digest.count("attention"),
                truncated=digest.truncated,
                digest_json=digest.model_dump_json(),
            )
        )

    @activity.defn(name="post_sweep_digest")
    async def post_sweep_digest(self, digest: SweepDigest) -> str:
        if not self.webhook_url:
            await asyncio.to_thread(self.digests.mark_posted, digest.sweep_id, "none")
            return "none"
        body = {
            "kind": "refloop.stale_loops",
            "swept_at": digest.swept_at.isoformat(),
            "task_queue": digest.task_queue,
            "stale": len(digest.loops),
            "overdue": digest.count("overdue"),
            "escalated": digest.count("escalated"),
            "attention": digest.count("attention"),
            "truncated": digest.truncated,
            "loops": [loop.model_dump(mode="json") for loop in digest.loops],
        }
        resp = await self.http.post(self.webhook_url, json=body)
        if 400 <= resp.status_code < 500:
            raise ApplicationError(f"operations webhook refused the digest: HTTP {resp.status_code}", non_retryable=True)
        resp.raise_for_status()
        await asyncio.to_thread(self.digests.mark_posted, digest.sweep_id, "webhook")
        log.info("sweep_digest_posted", stale=len(digest.loops), sweep_id=digest.sweep_id)
        return "webhook"
