"""Timers and escalation with time skipping: days pass in seconds on a real dev server.

Workflows started through `temporal_env.client` carry a time-skipping config: when nothing
but timers is pending, the server jumps the workflow's clock to the next timer.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from refloop.config import Settings
from refloop.domain import events as ev
from refloop.domain.loop import Outcome, Stage
from refloop.domain.policy import Policy
from refloop.gateways.dispatch import signal_event
from refloop.store.tables import EscalationRow
from refloop.temporal import workflow_id
from tests.conftest import unique
from tests.factories import happy_path
from tests.helpers import eventually
from workers.main import build_worker
from workflows.referral import LoopSummary


@pytest.fixture
async def ts(temporal_env, task_queue, store):
    async with build_worker(temporal_env.client, Settings(task_queue=task_queue), store):
        yield temporal_env.client


def short_window() -> Policy:
    # Close the workflow soon after closure so tests can await its result.
    return Policy(amendment_window=timedelta(days=3))


async def test_no_show_after_appointment_plus_grace_then_completes(ts, task_queue, store):
    rid = unique()
    t0 = datetime.now(timezone.utc)
    order, booking = happy_path(rid, t0)[:2]
    booking.appointment.start = t0 + timedelta(days=2)
    for e in (order, booking):
        await signal_event(ts, task_queue, rid, e, short_window())
    handle = ts.get_workflow_handle(workflow_id(rid), result_type=LoopSummary)
    # 2 days + grace pass; the no-show is recorded; nobody confirms the notice, so it
    # escalates; after the operator's (here: the EHR's) delivery report it closes.
    loop = await eventually(lambda: _stage(handle, Stage.DID_NOT_ATTEND), timeout=30)
    assert loop and loop.outcome == Outcome.DID_NOT_ATTEND and loop.no_show_inferred
    assert "grace" in loop.outcome_reason
    await signal_event(ts, task_queue, rid, ev.ResultDelivered(event_id=f"{rid}-d", occurred_at=t0, what="exception"))
    summary = await handle.result()  # amendment window (3 days) elapses too
    assert (summary.stage, summary.outcome) == (Stage.CLOSED, Outcome.DID_NOT_ATTEND)


async def _stage(handle, stage):
    from refloop.domain.loop import Loop

    loop = await handle.query("state", result_type=Loop)
    return loop if loop.stage == stage else None


async def test_stale_loop_escalates_remind_escalate_incident(ts, task_queue, store):
    rid = unique()
    t0 = datetime.now(timezone.utc)
    events = happy_path(rid, t0, priority="stat")[:3]  # arrived; modality never starts
    for e in events:
        await signal_event(ts, task_queue, rid, e)
    handle = ts.get_workflow_handle(workflow_id(rid), result_type=LoopSummary)
    from refloop.domain.loop import Loop

    async def escalated_thrice():
        loop = await handle.query("state", result_type=Loop)
        return loop if loop.escalation_level == 3 else None

    loop = await eventually(escalated_thrice, timeout=30)
    assert loop, "escalations did not fire"
    assert [e.level for e in loop.escalations] == [1, 2, 3]
    assert loop.stage == Stage.ARRIVED and loop.outcome is None  # escalation never closes a loop
    # remind at arrival + 30 min (STAT), escalate +30 min, incident +2 h (policy defaults)
    arrival = events[2].occurred_at
    gaps = [e.at - arrival for e in loop.escalations]
    assert gaps[0] >= timedelta(minutes=30) and gaps[2] >= timedelta(hours=2, minutes=30)
    rows = await eventually(lambda: _notified(store, rid))
    assert [r.level for r in rows] == [1, 2, 3] and all(r.notified == "log" for r in rows)


def _notified(store, rid) -> list[EscalationRow] | None:
    rows = store.escalations(rid)
    return rows if len(rows) == 3 and all(r.notified for r in rows) else None


async def test_closed_loop_completes_after_amendment_window(ts, task_queue, store):
    rid = unique()
    t0 = datetime.now(timezone.utc)
    from tests.factories import acknowledged, delivered

    for e in happy_path(rid, t0) + [delivered(rid, t0), acknowledged(rid, t0)]:
        await signal_event(ts, task_queue, rid, e, short_window())
    summary = await ts.get_workflow_handle(workflow_id(rid), result_type=LoopSummary).result()
    assert (summary.stage, summary.outcome, summary.events) == (Stage.CLOSED, Outcome.COMPLETED, 10)
