"""Persisting the loop to the SQL read model and audit log."""

from __future__ import annotations

from temporalio import activity

from activities.contracts import PersistRequest, PersistResult
from refloop.store.repo import Store


class StoreActivities:
    def __init__(self, store: Store):
        self.store = store

    @activity.defn(name="persist_loop")
    def persist_loop(self, req: PersistRequest) -> PersistResult:
        released = self.store.persist_loop(
            req.loop,
            timeline_from=req.timeline_from,
            escalations_from=req.escalations_from,
            milestones=req.milestones,
            stage_deadline=req.stage_deadline,
            history_length=req.history_length,
        )
        return PersistResult(released=released)
