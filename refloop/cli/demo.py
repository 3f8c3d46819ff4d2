"""`refloop demo`: start the embedded stack, replay a day of referrals from the public samples
through the real protocols, and show how every loop ended (and whether as intended)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from rich.console import Console

from refloop.config import Settings

EXIT_MISSED = 1  # some loop did not reach its intended outcome


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="replay a day of referrals (real HL7, DICOM and FHIR messages) and show how every loop ends",
        description=__doc__,
    )
    p.add_argument("--exit", action="store_true", help="stop after the summary (default: keep running for inspection until Ctrl-C)")
    p.add_argument("--samples", help="the public samples folder (default: $REFLOOP_SAMPLES, else ../shared/samples next to the repository)")
    p.add_argument("--data-dir", help="the demo's SQLite and logs, recreated each run (default: $REFLOOP_DATA_DIR/demo, i.e. .refloop/demo)")
    p.add_argument("--port", type=int, default=7233, help="Temporal gRPC port (default 7233)")
    p.add_argument("--ui-port", type=int, default=8233, help="Temporal UI port (default 8233)")
    p.add_argument("--http-port", type=int, help="HTTP gateway (default $REFLOOP_HTTP_PORT or 8000)")
    p.add_argument("--mllp-port", type=int, help="HL7 MLLP listener (default $REFLOOP_MLLP_PORT or 2575)")
    p.add_argument("--dicom-port", type=int, help="DICOM worklist and MPPS (default $REFLOOP_DICOM_PORT or 11112)")
    p.add_argument("--pace", type=float, default=0.3, help="seconds between a loop's steps, to follow along (default 0.3)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from refloop.cli.main import CliError
    from refloop.demo.samples import Samples, SamplesMissing, find_samples
    from refloop.demo.stack import Ports, StackError
    from refloop.logs import configure

    try:
        samples = Samples(find_samples(args.samples))
    except SamplesMissing as err:
        raise CliError(str(err)) from None
    env = Settings()
    ports = Ports(args.port, args.ui_port, args.http_port or env.http_port, args.mllp_port or env.mllp_port, args.dicom_port or env.dicom_port)
    try:
        ports.check_free()
    except StackError as err:
        raise CliError(str(err)) from None
    data_dir = Path(args.data_dir) if args.data_dir else env.data_dir / "demo"
    fresh_data_dir(data_dir)
    log = open(data_dir / "demo.log", "w")
    configure(json=True, stream=log)  # the terminal is for the day; the log (no PHI) for later
    logging.captureWarnings(True)  # library warnings (e.g. pydicom's value lengths) go to the log too
    console = Console() if Console().is_terminal else Console(width=220)
    try:
        return asyncio.run(_demo(args, console, samples, ports, data_dir))
    except StackError as err:
        raise CliError(str(err)) from None
    finally:
        log.close()


def fresh_data_dir(data_dir: Path) -> None:
    """The demo's SQLite starts empty every run (its Temporal is in memory: fresh too)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in ("refloop.db", "refloop.db-wal", "refloop.db-shm"):
        (data_dir / name).unlink(missing_ok=True)


async def _demo(args, console: Console, samples, ports, data_dir: Path) -> int:
    from refloop.demo.day import the_day
    from refloop.demo.display import Display
    from refloop.demo.ehr import Ehr
    from refloop.demo.replay import Replay
    from refloop.demo.stack import Stack, demo_settings, new_tokens
    from refloop.gateways.http.server import serving
    from refloop.store.db import make_engine
    from refloop.store.repo import Store

    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        running.add_signal_handler(sig, stop.set)
    tag = "D" + secrets.token_hex(3).upper()
    stories = the_day(tag, datetime.now(timezone.utc))
    refs = [r for s in stories for r in s.referrals]
    display = Display(console, refs, f"refloop demo · run {tag} · {len(refs)} referrals · Temporal UI {_ui(ports.ui)}")
    tokens = new_tokens()
    ehr = Ehr(token=tokens["ehr"], notify=display.ehr, page=display.page)
    async with serving(ehr.app) as ehr_base:
        settings = demo_settings(data_dir, ports, ehr_base, f"{ehr_base}/pager", tokens)
        ehr.api_base = f"http://127.0.0.1:{settings.http_port}"
        stack = Stack(settings, ports)
        console.print(f"Starting Temporal (UI {_ui(ports.ui)}), the worker and the gateways (HL7 :{ports.mllp}, HTTP :{ports.http}, DICOM :{ports.dicom})…")
        try:
            await stack.start()
            started = time.monotonic()
            replay = Replay(settings, samples, Store(make_engine(settings.db_url)), tokens, display, pace=args.pace)
            with display:
                await _until_done_or_stopped(replay.run(stories), stop)
            await ehr.drain()
            results = await _results(settings, refs, ehr)
            display.summary(results)
            _footer(console, results, time.monotonic() - started, ports, data_dir)
            if not args.exit and not stop.is_set():
                console.print("[bold]refloop demo keeps running for inspection; Ctrl-C stops it.[/]")
                await stop.wait()
        finally:
            console.print("Stopping…")
            await stack.stop()
    if stop.is_set() and not all(r.met for r in results):
        return 130
    return 0 if all(r.met for r in results) else EXIT_MISSED


async def _until_done_or_stopped(work, stop: asyncio.Event) -> None:
    """Run `work`; Ctrl-C cancels it (the summary then shows how far each loop got)."""
    task = asyncio.create_task(work)
    interrupted = asyncio.create_task(stop.wait())
    await asyncio.wait({task, interrupted}, return_when=asyncio.FIRST_COMPLETED)
    interrupted.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _results(settings, refs, ehr):
    """Each loop as its workflow has it now (the `state` query), and what the EHR got."""
    from refloop.demo.display import Result
    from refloop.domain.loop import Loop
    from refloop.outbound.fhir import resource_id
    from refloop.temporal import connect, workflow_id

    client = await connect(settings.temporal_address, settings.namespace)
    out = []
    for ref in refs:
        try:
            loop = await client.get_workflow_handle(workflow_id(ref.referral_id)).query("state", result_type=Loop)
        except Exception:  # noqa: BLE001 - no workflow: the summary says so
            loop = None
        out.append(Result(ref, loop, ehr.chart(resource_id(ref.referral_id))))
    return out


def _ui(port: int, query: str = "") -> str:
    base = f"http://127.0.0.1:{port}/namespaces/default/workflows"
    return f"{base}?query={quote(query)}" if query else base


def _footer(console: Console, results, elapsed: float, ports, data_dir: Path) -> None:
    met = sum(r.met for r in results)
    style = "bold green" if met == len(results) else "bold red"
    console.print(f"[{style}]{met} of {len(results)} loops reached their intended outcome[/] ({elapsed:.0f} s).")
    every_loop = 'WorkflowType="ReferralWorkflow"'
    console.print(f"Temporal UI, the day's loops:  {_ui(ports.ui, every_loop)}")
    console.print(f"  waiting for an operator:     {_ui(ports.ui, 'NeedsAttention=true')}")
    console.print("  Open a loop: its current details say where it stands, what it waits for and its last events;")
    console.print("  its history shows every event as a signal. `refloop ui-columns` adds LoopState, Priority… as list columns.")
    env = f"REFLOOP_DATA_DIR={data_dir}" + (f" REFLOOP_TEMPORAL_ADDRESS=127.0.0.1:{ports.temporal}" if ports.temporal != 7233 else "")
    example = results[0].ref.referral_id if results else "<referral>"
    console.print(f"From another terminal: {env} .venv/bin/refloop list | show {example} | inbox")
