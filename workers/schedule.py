"""The sweep's Temporal Schedule, created or brought up to date at worker start-up."""

from __future__ import annotations

import structlog
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from activities.contracts import SweepInput
from refloop.domain.policy import Policy
from workflows.sweep import SWEEP_WORKFLOW_TYPE

log = structlog.get_logger()


def sweep_schedule_id(task_queue: str) -> str:
    return f"refloop-sweep-{task_queue}"


def sweep_schedule(task_queue: str, policy: Policy) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SWEEP_WORKFLOW_TYPE,
            SweepInput(task_queue=task_queue),
            id=f"refloop-sweep-run-{task_queue}",
            task_queue=task_queue,
            static_summary="Escalation sweep: stale referral loops",
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=policy.sweep_interval)]),
        # A slow sweep never piles up behind itself: the next one is skipped instead.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note="created by the refloop worker; interval = policy.sweep_interval"),
    )


async def ensure_sweep_schedule(client: Client, task_queue: str, policy: Policy) -> str:
    """Create the schedule, or update it to the current policy if it exists. Returns its id."""
    schedule_id = sweep_schedule_id(task_queue)
    wanted = sweep_schedule(task_queue, policy)
    try:
        await client.create_schedule(schedule_id, wanted)
        log.info("sweep_schedule_created", schedule_id=schedule_id, every=str(policy.sweep_interval))
    except ScheduleAlreadyRunningError:

        def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=wanted)

        await client.get_schedule_handle(schedule_id).update(update)
        log.info("sweep_schedule_updated", schedule_id=schedule_id, every=str(policy.sweep_interval))
    return schedule_id
