"""The bare-Temporal baseline: a trivial workflow that receives the same signals as a
referral loop and runs one trivial activity per event. It is the engine's floor for us."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

WORKFLOW_TYPE = "BenchBaseline"


@activity.defn(name="bench_touch")
async def touch(seq: int) -> int:
    return seq


@workflow.defn(name=WORKFLOW_TYPE)
class BaselineWorkflow:
    """Counts events in the signal handler (as the product applies them there) and runs one
    activity per event; stays open afterwards, as a closed referral loop does."""

    def __init__(self) -> None:
        self._received = 0
        self._done = 0

    @workflow.run
    async def run(self) -> None:
        while True:
            await workflow.wait_condition(lambda: self._done < self._received)
            await workflow.execute_activity(touch, self._done, start_to_close_timeout=timedelta(seconds=30))
            self._done += 1

    @workflow.signal(name="event")
    def event(self, payload: dict) -> None:
        self._received += 1

    @workflow.query(name="progress")
    def progress(self) -> tuple[int, int]:
        """(events received, events whose activity completed)."""
        return self._received, self._done

