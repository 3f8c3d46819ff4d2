"""What is measured: the product (ReferralWorkflow through the real dispatch path) and the
bare-Temporal baseline. Both expose the same four operations, so one measurement code
drives both."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from bench import baseline
from bench.loads import loop_events, referral_id
from refloop.domain.events import EventBase
from refloop.domain.loop import Loop
from refloop.gateways.dispatch import signal_event
from refloop.temporal import workflow_id
from workflows.referral import LoopSummary


@dataclass
class Target:
    name: str
    client: Client
    task_queue: str

    def loop_ids(self, tag: str, count: int, start: int = 0) -> list[str]:
        return [referral_id(f"{self.name[0]}{tag}", n) for n in range(start, start + count)]

    def events(self, loop_id: str) -> list[EventBase]:
        return loop_events(loop_id)

    async def send(self, loop_id: str, event: EventBase) -> None:
        """Signal-with-start one event; returns once the server has accepted it."""
        raise NotImplementedError

    async def visible(self, loop_id: str) -> int:
        """How many events the workflow's queried state shows."""
        raise NotImplementedError

    async def settled(self, loop_id: str) -> int:
        """How many events are fully handled (state persisted / activity completed)."""
        return await self.visible(loop_id)

    async def applied(self, loop_id: str) -> int:
        """Events applied, the denominator of history events per applied event."""
        return await self.settled(loop_id)

    def workflow_id(self, loop_id: str) -> str:
        raise NotImplementedError


class Product(Target):
    """ReferralWorkflow, reached exactly as the gateways reach it (dispatch.signal_event).
    Its state becomes visible once the workflow task (with its persist step) completes."""

    def workflow_id(self, loop_id: str) -> str:
        return workflow_id(loop_id)

    async def send(self, loop_id: str, event: EventBase) -> None:
        await signal_event(self.client, self.task_queue, loop_id, event)

    async def visible(self, loop_id: str) -> int:
        summary = await self.client.get_workflow_handle(self.workflow_id(loop_id)).query("summary", result_type=LoopSummary)
        return summary.events

    async def applied(self, loop_id: str) -> int:
        loop = await self.client.get_workflow_handle(self.workflow_id(loop_id)).query("state", result_type=Loop)
        return sum(1 for t in loop.timeline if t.applied)


class Baseline(Target):
    """The trivial workflow, sent the very same event payloads."""

    def workflow_id(self, loop_id: str) -> str:
        return f"bench-baseline-{loop_id}"

    async def send(self, loop_id: str, event: EventBase) -> None:
        await self.client.start_workflow(
            baseline.WORKFLOW_TYPE,
            id=self.workflow_id(loop_id),
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal="event",
            start_signal_args=[event.model_dump(mode="json")],
        )

    async def _progress(self, loop_id: str) -> tuple[int, int]:
        received, done = await self.client.get_workflow_handle(self.workflow_id(loop_id)).query("progress", result_type=tuple[int, int])
        return received, done

    async def visible(self, loop_id: str) -> int:
        return (await self._progress(loop_id))[0]

    async def settled(self, loop_id: str) -> int:
        return (await self._progress(loop_id))[1]
