"""One benchmark run: its own Temporal dev server (in memory, headless, free port), the
product's and the baseline's workers in their own processes, every figure measured for both
with the same code, then printed with product/baseline ratios and written as JSON."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import bench
from bench import measure, mllp
from bench.report import ratios, render
from bench.targets import Baseline, Product, Target
from refloop.devserver import start_dev_server
from refloop.store.db import make_engine
from refloop.store.repo import InboxStore
from refloop.temporal import connect

ROOT = Path(bench.__file__).resolve().parents[1]
PHASES = ("latency", "throughput", "load", "mllp", "rss")


@dataclass
class Options:
    loops: int = 200  # full loops per target in the throughput figure
    concurrency: int = 50  # loops in flight
    probe_loops: int = 5  # latency: every event of these loops is one sample
    load_concurrency: int = 20  # loops busy in the background for the "under load" latency
    load_fraction: float = 0.5  # background events/s, as a fraction of the baseline's throughput
    load_events_per_s: float = 30.0  # used when the throughput phase did not run
    open_loops: list[int] = field(default_factory=lambda: [1000, 5000])  # worker RSS at these counts
    history_sample: int = 20
    mllp_service: str = ""  # MODULE:FUNC; default: the HL7 gateway when this build has one
    skip_mllp: bool = False
    db_url: str = ""  # the product's SQL store; default a SQLite file in the run's temp dir
    out_dir: Path = Path("bench/results")
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    targets: list[str] = field(default_factory=lambda: ["baseline", "product"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process of the run (worker or gateway), stopped with SIGTERM."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bench.proc", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    async def wait_ready(self, timeout: float = 60) -> None:
        line = await asyncio.wait_for(asyncio.to_thread(self.popen.stdout.readline), timeout)  # type: ignore[union-attr]
        if line.strip() != "ready":
            raise RuntimeError(f"{self.popen.args} did not start; see {self.log}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Run:
    def __init__(self, opts: Options, echo=print):
        self.opts = opts
        self.echo = echo
        self.tag = uuid.uuid4().hex[:6]
        self.tmp = Path(tempfile.mkdtemp(prefix="refloop-bench-"))
        self.db_url = opts.db_url or f"sqlite:///{self.tmp / 'refloop.db'}"
        self.address = ""
        self.procs: list[Proc] = []

    def env(self, task_queue: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        # Workers run from bytecode as an installed package does (pip compiles it): without it
        # the sandbox compiles the workflow module from source for every workflow it starts.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(
            PYTHONPYCACHEPREFIX=str(self.tmp / "pycache"),
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            REFLOOP_TEMPORAL_ADDRESS=self.address,
            REFLOOP_TASK_QUEUE=task_queue,
            REFLOOP_DATA_DIR=str(self.tmp),
            DATABASE_URL=self.db_url,
            **extra,
        )
        return env

    async def worker(self, kind: str, task_queue: str) -> Proc:
        proc = Proc(["worker", kind], self.env(task_queue), self.tmp / f"worker-{kind}.log")
        self.procs.append(proc)
        await proc.wait_ready()
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        self.procs.remove(proc)

    async def execute(self) -> dict:
        started = time.monotonic()
        port = free_port()
        server_log = open(self.tmp / "temporal.log", "ab")
        server = start_dev_server(port, ui_port=None, log=server_log)  # in memory, headless
        self.address = f"127.0.0.1:{port}"
        try:
            client = await self._connect()
            result = await self._measure(client)
        finally:
            for proc in list(self.procs):
                proc.stop()
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        result["seconds"] = round(time.monotonic() - started, 1)
        return result

    async def _connect(self):
        deadline = time.monotonic() + 30
        while True:
            try:
                return await connect(self.address)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _measure(self, client) -> dict:
        o = self.opts
        targets: list[Target] = [
            cls(name, client, f"bench-{name}-{self.tag}") for name, cls in (("baseline", Baseline), ("product", Product)) if name in o.targets
        ]
        figures: dict[str, dict] = {t.name: {} for t in targets}
        workers = {t.name: await self.worker(t.name, t.task_queue) for t in targets}

        # Each phase runs the baseline, then the product, on the same server: same conditions.
        if "latency" in o.phases:
            for t in targets:
                with self.phase(t, f"latency, idle: {o.probe_loops} loops x {len(t.events('x'))} events", workers[t.name]):
                    samples = await measure.latency(t, t.loop_ids("idle", o.probe_loops))
                    figures[t.name]["latency_idle"] = self.show(measure.percentiles(samples))
                    # The history cost of events that arrive apart, as real ones do.
                    spaced_ids = t.loop_ids("spaced", o.probe_loops)
                    await measure.drive_spaced(t, spaced_ids, spacing=0.5)
                    history = await measure.history_per_event(t, spaced_ids)
                    figures[t.name]["history_spaced"] = self.show(history, keys=("history_events", "applied_events", "per_applied_event"))
        if "throughput" in o.phases:
            throughput_ids = {t.name: t.loop_ids("tp", o.loops) for t in targets}
            for t in targets:
                with self.phase(t, f"throughput: {o.loops} loops, {o.concurrency} in flight", workers[t.name]):
                    figures[t.name]["throughput"] = self.show(await measure.throughput(t, throughput_ids[t.name], o.concurrency))
            for t in targets:
                with self.phase(t, f"history of {o.history_sample} loops", workers[t.name]):
                    history = await measure.history_per_event(t, throughput_ids[t.name][: o.history_sample])
                    figures[t.name]["history"] = self.show(history, keys=("history_events", "applied_events", "per_applied_event"))
        if "load" in o.phases:
            # The same offered load for both: a fraction of the baseline's measured throughput.
            base = figures.get("baseline", {}).get("throughput", {}).get("events_per_s")
            rate = o.load_fraction * base if base else o.load_events_per_s
            for t in targets:
                what = f"latency with {o.load_concurrency} loops in the background receiving {rate:.0f} events/s"
                with self.phase(t, what, workers[t.name]):
                    load_ids = t.loop_ids("load", 20_000)  # far more than the probe needs
                    samples, load = await measure.latency_under_load(t, t.loop_ids("probe", o.probe_loops), load_ids, o.load_concurrency, rate)
                    figures[t.name]["latency_load"] = self.show({**measure.percentiles(samples), **load})
        if "mllp" in o.phases and "product" in workers:
            figures["product"]["mllp"] = await self._mllp(next(t for t in targets if t.name == "product"))
        for proc in workers.values():
            self.stop(proc)

        # Worker RSS: a fresh worker per target, loops opened with their first event. Both
        # targets open their loops at the same time: RSS is per worker process, and opening
        # 2 x 5,000 loops one target after the other would take most of the run.
        if "rss" in o.phases:
            for t, rss in zip(targets, await asyncio.gather(*(self._rss(t) for t in targets))):
                figures[t.name]["rss"] = rss

        return {
            "machine": machine(),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()},
            "figures": figures,
            "ratios": ratios(figures) if len(targets) == 2 else {},
        }

    def show(self, figure: dict, keys: tuple[str, ...] = ()) -> dict:
        self.echo("    " + ", ".join(f"{k}={v}" for k, v in figure.items() if not keys or k in keys))
        return figure

    @contextmanager
    def phase(self, t: Target, what: str, proc: Proc):
        """Announce a phase, time it, and fail loudly if the worker died during it."""
        self.echo(f"[{t.name}] {what}")
        started = time.monotonic()
        yield
        if proc.popen.poll() is not None:
            raise RuntimeError(f"the {t.name} worker exited during '{what}'; see {proc.log}")
        self.echo(f"[{t.name}]   done in {time.monotonic() - started:.1f} s")

    async def _rss(self, t: Target) -> dict:
        o = self.opts
        t.task_queue = f"bench-{t.name}-rss-{self.tag}"
        proc = await self.worker(t.name, t.task_queue)
        out: dict = {"idle_mb": await measure.settled_rss(proc.pid), "open_loops": {}}
        opened = 0
        for count in sorted(o.open_loops):
            with self.phase(t, f"worker RSS: opening loops up to {count}", proc):
                ids = t.loop_ids("rss", count - opened, start=opened)
                seconds, failures = await measure.open_loops(t, ids, o.concurrency)
                opened = count
                rss = await measure.settled_rss(proc.pid)
                out["open_loops"][str(count)] = {"rss_mb": rss, "failures": failures, "seconds_to_open": round(seconds, 1)}
                self.echo(f"[{t.name}]   RSS {rss} MB with {count} open loops ({failures} failed to settle)")
        out["max_cached_workflows"] = 1000  # the SDK default; neither worker overrides it
        self.stop(proc)
        return out

    async def _mllp(self, product: Target) -> dict:
        o = self.opts
        spec = None if o.skip_mllp else mllp.gateway_service(o.mllp_service)
        if spec is None:
            reason = "skipped (--skip-mllp)" if o.skip_mllp else f"not available: this build has no {mllp.GATEWAY_MODULE}"
            self.echo(f"[product] HL7 MLLP gateway: {reason}")
            return {"available": False, "reason": reason}
        port = free_port()
        env = self.env(
            product.task_queue,
            REFLOOP_BIND_HOST="127.0.0.1",
            REFLOOP_MLLP_PORT=str(port),
            REFLOOP_HTTP_PORT=str(free_port()),
            REFLOOP_DICOM_PORT=str(free_port()),
        )
        gateway = Proc(["service", spec], env, self.tmp / "gateway.log")
        self.procs.append(gateway)
        try:
            await _wait_port(port)
            self.echo(f"[product] throughput through the HL7 MLLP gateway ({spec}): {o.loops} loops")
            driver = mllp.MllpLoops(port, product, InboxStore(make_engine(self.db_url)))
            ids = product.loop_ids("mllp", o.loops)
            seconds, failures = await measure.run_pool(ids, o.concurrency, driver.drive)
        finally:
            self.stop(gateway)
        per_loop = mllp.MESSAGES_PER_LOOP
        parked = [r for r in InboxStore(make_engine(self.db_url)).list("parked", limit=o.loops * per_loop) if r.protocol == "hl7"]
        return self.show({
            "available": True,
            "service": spec,
            "loops": o.loops,
            "messages_per_loop": per_loop,
            "seconds": round(seconds, 2),
            "loops_per_s": round(o.loops / seconds, 2),
            "events_per_s": round(o.loops * per_loop / seconds, 1),
            "failures": failures,
            "negative_acks": driver.negative,
            "parked_after_run": len(parked),  # messages the gateway could not tie to a loop
        }, keys=("loops_per_s", "events_per_s", "failures", "parked_after_run"))


async def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not listen on {port}")
            await asyncio.sleep(0.2)


def machine() -> dict:
    from importlib.metadata import version

    import psutil

    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    from refloop.devserver import find_binary

    server = subprocess.run([find_binary("temporal"), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": os_name,
        "python": platform.python_version(),
        "temporalio": version("temporalio"),
        "temporal_cli": server,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(opts: Options, echo=print) -> tuple[dict, Path]:
    # SIGTERM unwinds like Ctrl-C, so the dev server and the workers are stopped too.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = asyncio.run(Run(opts, echo).execute())
    finally:
        signal.signal(signal.SIGTERM, previous)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    path = opts.out_dir / f"bench-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2))
    echo(render(result))
    echo(f"JSON: {path}")
    return result, path
