"""SweepWorkflow: the scheduled safety net beside each loop's own deadline timer.

A Temporal Schedule runs it every `policy.sweep_interval` (overlap: skip). It asks visibility
for loops that are past their stage deadline, escalated or flagged for an operator, keeps the
digest in SQL and posts it to the operations webhook when anything is stale. It never changes a loop.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.contracts import FindStaleRequest, FindStaleResult, SweepDigest, SweepInput

SWEEP_WORKFLOW_TYPE = "SweepWorkflow"


@workflow.defn(name=SWEEP_WORKFLOW_TYPE)
class SweepWorkflow:
    @workflow.run
    async def run(self, inp: SweepInput) -> SweepDigest:
        now = workflow.now()
        found = await workflow.execute_activity(
            "find_stale_loops",
            FindStaleRequest(task_queue=inp.task_queue, now=now, limit=inp.limit),
            result_type=FindStaleResult,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=5),
            summary="find overdue, escalated and flagged loops (visibility)",
        )
        info = workflow.info()
        digest = SweepDigest(
            sweep_id=f"{info.workflow_id}/{info.run_id}",
            swept_at=now,
            task_queue=inp.task_queue,
            loops=found.loops,
            truncated=found.truncated,
        )
        await workflow.execute_activity(
            "record_sweep_digest",
            digest,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=10),
            summary=f"keep the digest: {len(digest.loops)} stale loops",
        )
        if not digest.loops:
            return digest  # nothing stale: no message for operations
        await workflow.execute_activity(
            "post_sweep_digest",
            digest,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(minutes=1)),
            summary="post the digest to the operations webhook",
        )
        return digest
