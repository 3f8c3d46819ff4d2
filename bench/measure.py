"""Measurement code shared by every target: the same drivers, clocks and statistics."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import psutil

from bench.targets import Target

POLL = 0.05  # seconds between "is it done yet?" queries while a loop settles


async def wait_until(probe: Callable[[], Awaitable[int]], wanted: int, timeout: float, interval: float = POLL) -> int:
    deadline = time.monotonic() + timeout
    while True:
        seen = await probe()
        if seen >= wanted or time.monotonic() > deadline:
            return seen
        if interval:
            await asyncio.sleep(interval)


async def drive_loop(target: Target, loop_id: str, events: list | None = None, timeout: float = 120) -> bool:
    """Send a loop's events one after the other (each accepted before the next), then wait
    until all are settled. True when they all settled in time."""
    events = events if events is not None else target.events(loop_id)
    for e in events:
        await target.send(loop_id, e)
    return await wait_until(lambda: target.settled(loop_id), len(events), timeout) >= len(events)


async def run_pool(loop_ids: list[str], concurrency: int, work: Callable[[str], Awaitable[bool]]) -> tuple[float, int]:
    """Run `work` over all loops, `concurrency` at a time. Returns (seconds, failures)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for lid in loop_ids:
        queue.put_nowait(lid)
    failures = 0

    async def runner() -> None:
        nonlocal failures
        while not queue.empty():
            lid = queue.get_nowait()
            try:
                ok = await work(lid)
            except Exception:
                ok = False
            failures += 0 if ok else 1

    t0 = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(min(concurrency, len(loop_ids)) or 1)))
    return time.perf_counter() - t0, failures


async def throughput(target: Target, loop_ids: list[str], concurrency: int) -> dict:
    events_per_loop = len(target.events(loop_ids[0]))
    seconds, failures = await run_pool(loop_ids, concurrency, lambda lid: drive_loop(target, lid))
    return {
        "loops": len(loop_ids),
        "events_per_loop": events_per_loop,
        "concurrency": concurrency,
        "seconds": round(seconds, 2),
        "loops_per_s": round(len(loop_ids) / seconds, 2),
        "events_per_s": round(len(loop_ids) * events_per_loop / seconds, 1),
        "failures": failures,
    }


async def latency(target: Target, loop_ids: list[str], timeout: float = 30) -> list[float]:
    """For each event of each probe loop: from the signal being accepted (send returned) to
    the event being visible through a query, polled back to back. Milliseconds."""
    samples: list[float] = []
    for lid in loop_ids:
        for i, e in enumerate(target.events(lid), start=1):
            await target.send(lid, e)
            accepted = time.perf_counter()
            if await wait_until(lambda: target.visible(lid), i, timeout, interval=0) >= i:
                samples.append((time.perf_counter() - accepted) * 1000)
        await wait_until(lambda: target.settled(lid), i, timeout)
    return samples


class Pacer:
    """Hands out send slots at a fixed rate shared by all background drivers (open-loop load:
    the offered load does not depend on how fast the target answers)."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def latency_under_load(
    target: Target, probe_ids: list[str], load_ids: list[str], load_concurrency: int, events_per_s: float
) -> tuple[list[float], dict]:
    """The same probe while `load_concurrency` other loops receive events at a fixed total rate,
    the same rate for every target."""
    stop = asyncio.Event()
    pacer = Pacer(events_per_s)
    it = iter(load_ids)
    sent = 0

    async def background() -> None:
        nonlocal sent
        while not stop.is_set():
            lid = next(it, None)
            if lid is None:
                return
            for e in target.events(lid):
                await pacer.wait()
                if stop.is_set():
                    return
                await target.send(lid, e)
                sent += 1

    tasks = [asyncio.create_task(background()) for _ in range(load_concurrency)]
    await asyncio.sleep(2.0)  # let the load reach a steady state
    t0, sent0 = time.monotonic(), sent
    samples = await latency(target, probe_ids)
    achieved = (sent - sent0) / (time.monotonic() - t0)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples, {
        "background_loops_in_flight": load_concurrency,
        "background_events_per_s_offered": round(events_per_s, 1),
        "background_events_per_s_sent": round(achieved, 1),
    }


def percentiles(samples: list[float]) -> dict:
    if not samples:
        return {"samples": 0, "p50_ms": None, "p95_ms": None}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"samples": len(samples), "p50_ms": round(statistics.median(ordered), 1), "p95_ms": round(p95, 1)}


async def history_per_event(target: Target, loop_ids: list[str]) -> dict:
    """History events per applied event over sampled loops, with the event-type breakdown."""
    total_events = total_applied = 0
    types: Counter[str] = Counter()
    for lid in loop_ids:
        history = await target.client.get_workflow_handle(target.workflow_id(lid)).fetch_history()
        total_events += len(history.events)
        types.update(_event_type_name(e.event_type) for e in history.events)
        total_applied += await target.applied(lid)
    return {
        "sampled_loops": len(loop_ids),
        "history_events": total_events,
        "applied_events": total_applied,
        "per_applied_event": round(total_events / total_applied, 2) if total_applied else None,
        "breakdown_per_loop": {k: round(v / len(loop_ids), 1) for k, v in types.most_common()},
    }


async def drive_spaced(target: Target, loop_ids: list[str], spacing: float) -> None:
    """Loops whose events arrive `spacing` seconds apart, as a real feed's do: one event per
    workflow task. No query meanwhile (a query that comes while a workflow task runs its local
    activity forces an extra workflow task), one at the end to wait until all are settled."""

    async def one(lid: str) -> None:
        events = target.events(lid)
        for e in events:
            await target.send(lid, e)
            await asyncio.sleep(spacing)
        await wait_until(lambda: target.settled(lid), len(events), timeout=60)

    await asyncio.gather(*(one(lid) for lid in loop_ids))


def _event_type_name(value: int) -> str:
    from temporalio.api.enums.v1 import EventType

    return EventType.Name(value).removeprefix("EVENT_TYPE_")


async def open_loops(target: Target, loop_ids: list[str], concurrency: int, timeout: float = 600) -> tuple[float, int]:
    """Start loops with their first event only: they stay open, waiting (cached in the worker).
    Sends are not followed by a query each (that would double the load); instead the run
    waits until the server has handed every workflow task to the worker, then checks the
    last loops opened. Returns (seconds, loops not settled)."""

    async def first_event(lid: str) -> bool:
        await target.send(lid, target.events(lid)[0])
        return True

    started = time.perf_counter()
    _, failures = await run_pool(loop_ids, concurrency, first_event)
    deadline = time.monotonic() + timeout
    while await workflow_backlog(target) > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    for lid in loop_ids[-concurrency:]:
        if await wait_until(lambda: target.settled(lid), 1, max(1.0, deadline - time.monotonic())) < 1:
            failures += 1
    return time.perf_counter() - started, failures


async def workflow_backlog(target: Target) -> int:
    """Workflow tasks waiting on the target's task queue (the server's approximate count)."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    resp = await target.client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=target.client.namespace,
            task_queue=TaskQueue(name=target.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            report_stats=True,
        )
    )
    return resp.stats.approximate_backlog_count


async def settled_rss(pid: int, settle: float = 2.0) -> float:
    """Worker RSS in MB once it has gone quiet (activities and evictions done)."""
    proc = psutil.Process(pid)
    proc.cpu_percent(None)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await asyncio.sleep(settle)
        if proc.cpu_percent(None) < 10:
            break
    return round(proc.memory_info().rss / 2**20, 1)
