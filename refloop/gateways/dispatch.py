"""Hand an event to its referral's workflow with signal-with-start (the first event starts the loop)."""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from refloop import temporal as names
from refloop.domain.events import EventBase
from refloop.domain.policy import Policy
from workflows.referral import ReferralInput, ReferralWorkflow


async def signal_event(
    client: Client, task_queue: str, referral_id: str, event: EventBase, policy: Policy | None = None
) -> WorkflowHandle:
    """Returns once Temporal has durably accepted the event (the signal is in history).

    Raises WorkflowAlreadyStartedError when the referral's loop has already completed."""
    return await client.start_workflow(
        ReferralWorkflow.run,
        ReferralInput(referral_id=referral_id, policy=policy or Policy()),
        id=names.workflow_id(referral_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        # One referral, one loop: a completed loop is never silently restarted by a late
        # event (raises WorkflowAlreadyStartedError; the intake keeps the message as late).
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        start_signal=event.kind,  # type: ignore[attr-defined]
        start_signal_args=[event],
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(names.REFERRAL_ID, referral_id),
                SearchAttributePair(names.LOOP_STATE, "new"),
            ]
        ),
        static_summary=f"Referral {referral_id}",
    )
