"""The scheduled escalation sweep: visibility queries find exactly the stale loops, the digest is
kept in SQL, posted to the operations webhook and printed by `refloop stale`."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from temporalio.worker import UnsandboxedWorkflowRunner

from activities.contracts import SweepDigest, SweepInput
from refloop.cli.main import main as cli
from refloop.config import Settings
from refloop.domain.policy import PerPriority, Policy, StageTargets
from refloop.gateways.dispatch import signal_event
from refloop.store.digests import DigestStore
from refloop.visibility import loops_query
from tests.conftest import unique
from tests.factories import order
from tests.receivers import FhirReceiver, eventually
from workers.main import build_worker
from workers.schedule import ensure_sweep_schedule, sweep_schedule_id
from workflows.sweep import SweepWorkflow

# Stat orders must be booked within 8 s (so they go stale during the test); routine within 14 d.
POLICY = Policy(stages=StageTargets(booking=PerPriority(stat="8s", urgent="1d", routine="14d")))


async def _start(client, task_queue: str, rids: list[str], priority: str) -> None:
    gate = asyncio.Semaphore(50)
    now = datetime.now(timezone.utc)

    async def one(rid: str) -> None:
        async with gate:
            await signal_event(client, task_queue, rid, order(rid, now, priority=priority), POLICY)

    await asyncio.gather(*(one(r) for r in rids))


async def _count(client, query: str) -> int:
    return (await client.count_workflows(query)).count


async def _sweep(client, loops_queue: str, sweep_queue: str) -> SweepDigest:
    return await client.execute_workflow(
        SweepWorkflow.run, SweepInput(task_queue=loops_queue), id=f"sweep-{unique()}", task_queue=sweep_queue, result_type=SweepDigest
    )


async def test_sweep_reports_exactly_the_stale_loops_among_500(client, task_queue, store, tmp_path, monkeypatch, capsys):
    fresh = [unique("FRESH") for _ in range(480)]
    stale = [unique("STALE") for _ in range(20)]
    sweep_queue = f"{task_queue}-sweep"
    ordered = loops_query(task_queue=task_queue, state="ordered")
    async with FhirReceiver() as ops, build_worker(client, Settings(task_queue=sweep_queue, operations_webhook=ops.webhook), store):
        # Unsandboxed: the same workflow code, without re-importing it for each of 500 new runs.
        async with build_worker(client, Settings(task_queue=task_queue), store, workflow_runner=UnsandboxedWorkflowRunner()):
            await _start(client, task_queue, fresh, "routine")
            assert await eventually(lambda: _visible(client, ordered, 480), timeout=120)
            stale_ordered_at = datetime.now(timezone.utc)
            await _start(client, task_queue, stale, "stat")
            assert await eventually(lambda: _visible(client, ordered, 500), timeout=30)
        # The loops' worker is gone: their own timers cannot fire. The sweep is the safety net.
        overdue_at = stale_ordered_at + POLICY.stages.booking.stat + timedelta(seconds=1)
        await asyncio.sleep(max(0.0, (overdue_at - datetime.now(timezone.utc)).total_seconds()))
        digest = await _sweep(client, task_queue, sweep_queue)
        assert sorted(loop.referral_id for loop in digest.loops) == sorted(stale)
        assert all(loop.reasons == ["overdue"] and loop.priority == "stat" and loop.state == "ordered" for loop in digest.loops)
        assert all(loop.stage_deadline and loop.stage_deadline < digest.swept_at for loop in digest.loops)
        row = DigestStore(store.engine).latest(task_queue)
        assert row is not None and (row.stale, row.overdue, row.escalated) == (20, 20, 0) and row.posted == "webhook"
        posted = await eventually(lambda: ops.posts)
        assert posted[-1]["stale"] == 20 and sorted(p["referral_id"] for p in posted[-1]["loops"]) == sorted(stale)

        monkeypatch.setenv("DATABASE_URL", str(store.engine.url))
        monkeypatch.setenv("REFLOOP_TASK_QUEUE", task_queue)
        assert cli(["stale"]) == 0
        out = capsys.readouterr().out
        assert "20 stale" in out and all(rid in out for rid in stale) and not any(rid in out for rid in fresh[:50])

        # The worker is back: each stale loop's timer fires and escalates; the sweep now sees
        # them as escalated (no longer overdue: their next deadline is ahead).
        async with build_worker(client, Settings(task_queue=task_queue), store, workflow_runner=UnsandboxedWorkflowRunner()):
            escalated = loops_query(task_queue=task_queue) + " AND EscalationLevel = 1"
            assert await eventually(lambda: _visible(client, escalated, 20), timeout=60)
            digest = await _sweep(client, task_queue, sweep_queue)
        assert sorted(loop.referral_id for loop in digest.loops) == sorted(stale)
        assert all(loop.reasons == ["escalated"] and loop.escalation_level == 1 for loop in digest.loops)


async def _visible(client, query: str, n: int) -> bool:
    return await _count(client, query) == n


async def test_schedule_is_created_then_updated_and_runs_a_sweep(client, task_queue, store):
    async with build_worker(client, Settings(task_queue=task_queue), store):
        schedule_id = await ensure_sweep_schedule(client, task_queue, Policy(sweep_interval="1h"))
        assert schedule_id == sweep_schedule_id(task_queue)
        handle = client.get_schedule_handle(schedule_id)
        try:
            desc = await handle.describe()
            assert desc.schedule.spec.intervals[0].every == timedelta(hours=1)
            assert desc.schedule.policy.overlap.name == "SKIP"
            # Start-up again with another policy: the same schedule, brought up to date.
            await ensure_sweep_schedule(client, task_queue, Policy(sweep_interval="10m"))
            desc = await handle.describe()
            assert desc.schedule.spec.intervals[0].every == timedelta(minutes=10)
            await handle.trigger()
            row = await eventually(lambda: DigestStore(store.engine).latest(task_queue), timeout=30)
            assert row is not None and row.stale == 0 and row.task_queue == task_queue
        finally:
            await handle.delete()
