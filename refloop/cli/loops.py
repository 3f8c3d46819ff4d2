"""`refloop send` and `refloop show`: drive and inspect one loop from a terminal."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from refloop.config import Settings
from refloop.domain.events import EVENT_KINDS, parse_event
from refloop.domain.loop import Loop

console = Console()


def register(sub) -> None:
    p = sub.add_parser("send", help="send one event to a referral's loop (starts it if needed)")
    p.add_argument("kind", choices=EVENT_KINDS, metavar="event-kind", help=", ".join(EVENT_KINDS))
    p.add_argument("--referral", required=True, help="placer order number (the referral's ID)")
    p.add_argument("--json", dest="json_file", help="event fields as a JSON file ('-' for stdin)")
    p.add_argument("fields", nargs="*", help="field=value; dotted paths for nested fields (patient.id.value=123)")
    p.set_defaults(func=cmd_send)
    s = sub.add_parser("show", help="a referral's state, deliveries, status updates, escalations and timeline")
    s.add_argument("ident", help="placer order number or accession number")
    s.add_argument("--json", action="store_true", help="print the loop as JSON")
    s.set_defaults(func=cmd_show)
    ls = sub.add_parser("list", help="open loops (Temporal visibility), newest first")
    ls.add_argument("--state", help="only loops in this state (e.g. scheduled, delivered, on_hold)")
    ls.add_argument("--stale", action="store_true", help="only loops past their stage deadline or escalated")
    ls.add_argument("--attention", action="store_true", help="only loops that need an operator")
    ls.add_argument("--closed", action="store_true", help="include loops whose workflow has ended")
    ls.add_argument("--limit", type=int, default=200)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)


def _set_path(data: dict, dotted: str, value: str) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    try:
        data[keys[-1]] = json.loads(value)  # numbers, booleans, lists
    except json.JSONDecodeError:
        data[keys[-1]] = value


def build_event(kind: str, referral: str, fields: list[str], json_file: str | None = None) -> dict:
    data: dict = {}
    if json_file:
        text = Path("/dev/stdin").read_text() if json_file == "-" else Path(json_file).read_text()
        data = json.loads(text)
    for f in fields:
        if "=" not in f:
            from refloop.cli.main import CliError

            raise CliError(f"field {f!r} is not field=value")
        k, v = f.split("=", 1)
        _set_path(data, k, v)
    data["kind"] = kind
    data.setdefault("event_id", f"cli-{uuid.uuid4()}")
    data.setdefault("occurred_at", datetime.now(timezone.utc).isoformat())
    data.setdefault("source", "cli")
    if kind == "order_placed":
        data.setdefault("placer_order_number", referral)
    return data


def cmd_send(args) -> int:
    from refloop.cli.main import CliError
    from refloop.gateways.dispatch import signal_event
    from refloop.temporal import connect

    data = build_event(args.kind, args.referral, args.fields, args.json_file)
    try:
        event = parse_event(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors())
        raise CliError(f"invalid {args.kind} event: {problems}") from None
    settings = Settings()

    async def go():
        client = await connect(settings.temporal_address, settings.namespace)
        return await signal_event(client, settings.task_queue, args.referral, event, settings.policy())

    handle = asyncio.run(go())
    console.print(f"sent [bold]{args.kind}[/] ({event.event_id}) to {handle.id}")
    return 0


async def fetch_loop(settings: Settings, ident: str) -> Loop | None:
    """Live state from the workflow when it runs; otherwise the SQL read model."""
    from refloop.store.db import make_engine
    from refloop.store.repo import Store
    from refloop.temporal import connect, workflow_id

    store = Store(make_engine(settings.db_url))
    referral_id = store.resolve(ident) or ident
    try:
        client = await connect(settings.temporal_address, settings.namespace)
        return await client.get_workflow_handle(workflow_id(referral_id)).query("state", result_type=Loop)
    except Exception:  # not running (completed, unknown, server down): the read model
        return store.get_loop(referral_id)


def _when(at: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return f"{at:{fmt}}" if at else "-"


def _relative(at: datetime | None, now: datetime) -> str:
    """'in 2h10m' / '[red]overdue 5m[/]'."""
    if at is None:
        return "-"
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    seconds = int((at - now).total_seconds())
    minutes = abs(seconds) // 60
    text = f"{minutes // 1440}d{(minutes % 1440) // 60}h" if minutes >= 1440 else f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
    return f"in {text}" if seconds >= 0 else f"[red]overdue {text}[/]"


def render_loop(loop: Loop, settings: Settings | None = None) -> None:
    """The loop, then what the SQL audit log knows of it: deliveries, status updates, escalations."""
    from refloop.domain.machine import waiting_for

    settings = settings or Settings()
    now = datetime.now(timezone.utc)
    ref = loop.referral
    extra = _audit(settings, ref.referral_id)
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold cyan")
    head.add_column()
    head.add_row("referral", ref.referral_id)
    state = f"[bold]{loop.stage.value}[/]"
    if loop.outcome:
        state += f"  ({loop.outcome.value}: {loop.outcome_reason})"
    head.add_row("state", state)
    head.add_row("waiting for", waiting_for(loop, settings.policy()))
    head.add_row("since", f"{_when(loop.stage_since)} UTC" if loop.stage_since else "-")
    deadline = extra.get("deadline")
    # A closed loop's only deadline is the end of its amendment window, not a stage target.
    label = "amendments until" if loop.stage.value == "closed" else "deadline"
    head.add_row(label, f"{_when(deadline)} UTC ({_relative(deadline, now)})" if deadline else "-")
    s = ref.service
    head.add_row("service", f"{s.procedure_code} {s.procedure_display} [{s.modality or '-'}] {s.priority.value}")
    ids = ref.identifiers
    head.add_row("identifiers", f"accession={ids.accession_number or '-'} study={ids.study_instance_uid or '-'} sps={ids.sps_id or '-'}")
    head.add_row("requester", f"{ref.requester.channel} {ref.requester.endpoint or '(no endpoint)'}")
    if loop.report.version or loop.report.status:
        critical = " [bold red]CRITICAL[/]" if loop.report.critical else ""
        head.add_row(
            "report",
            f"v{loop.report.version} {loop.report.status}{critical}; delivered v{loop.delivered_version}, acknowledged v{loop.acknowledged_version}"
            + (f"; pending: {loop.pending_delivery}" if loop.pending_delivery else ""),
        )
    if loop.hold:
        head.add_row("[yellow]on hold[/]", loop.hold.reason)
    if loop.escalation_level:
        head.add_row("escalation", f"level {loop.escalation_level} ({len(loop.escalations)} in all)")
    for a in loop.open_anomalies:
        head.add_row("[red]anomaly[/]", f"{a.code}: {a.detail}")
    console.print(head)
    _table(
        "deliveries",
        ("at", "what", "v", "try", "channel", "result", "error"),
        [
            (_when(a.at, "%m-%d %H:%M:%S"), a.what, str(a.version), str(a.attempt), a.channel,
             "[green]ok[/]" if a.ok else f"[red]{a.status_code or 'failed'}[/]", a.error[:80])
            for a in extra.get("deliveries", [])
        ],
    )
    _table(
        "status updates to the requester",
        ("seq", "milestone", "stage", "status", "tries", "error"),
        [
            (str(r.seq), p.get("milestone", ""), p.get("stage", ""), r.status, str(r.attempts), r.last_error[:80])
            for r, p in extra.get("outbox", [])
        ],
    )
    _table(
        "escalations",
        ("at", "level", "stage", "reason"),
        [(_when(e.at, "%m-%d %H:%M:%S"), str(e.level), e.stage, e.reason) for e in loop.escalations],
    )
    _table(
        "timeline",
        ("received", "occurred", "event", "source", "applied", "note"),
        [
            (_when(e.received_at, "%m-%d %H:%M:%S"), _when(e.occurred_at, "%m-%d %H:%M:%S"), e.kind, e.source,
             "yes" if e.applied else "[yellow]no[/]", e.note)
            for e in loop.timeline
        ],
    )


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    if not rows:
        return
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    console.print(t)


def _audit(settings: Settings, referral_id: str) -> dict:
    """Deadline, delivery attempts and outbox rows from the SQL store (empty if unreachable)."""
    try:
        from sqlmodel import Session

        from refloop.store.db import make_engine
        from refloop.store.outbox import DeliveryLog, OutboxStore
        from refloop.store.tables import LoopRow

        engine = make_engine(settings.db_url)
        with Session(engine) as s:
            row = s.get(LoopRow, referral_id)
            deadline = row.stage_deadline if row else None
        outbox = [(r, json.loads(r.payload_json)) for r in OutboxStore(engine).rows(referral_id)]
        return {"deadline": deadline, "deliveries": DeliveryLog(engine).attempts(referral_id), "outbox": outbox}
    except Exception:
        return {}


def cmd_show(args) -> int:
    from refloop.cli.main import CliError

    settings = Settings()
    loop = asyncio.run(fetch_loop(settings, args.ident))
    if loop is None:
        raise CliError(f"no referral found for {args.ident!r} (placer order number or accession)")
    if args.json:
        print(loop.model_dump_json(indent=2))
    else:
        render_loop(loop, settings)
    return 0


def cmd_list(args) -> int:
    from refloop.cli.main import CliError
    from refloop.temporal import connect
    from refloop.visibility import find_loops, loops_query

    settings = Settings()
    now = datetime.now(timezone.utc)
    query = loops_query(
        task_queue=settings.task_queue,
        state=args.state or "",
        stale_at=now if args.stale else None,
        attention=args.attention,
        running=not args.closed,
    )

    async def go():
        client = await connect(settings.temporal_address, settings.namespace)
        return await find_loops(client, query, args.limit)

    try:
        found, more = asyncio.run(go())
    except RuntimeError as err:
        raise CliError(f"cannot list loops from Temporal at {settings.temporal_address}: {err}") from None
    if args.json:
        print(json.dumps([f.model_dump(mode="json") for f in found], indent=2))
        return 0
    t = Table(title=f"{len(found)}{'+' if more else ''} loops", title_justify="left")
    t.add_column("referral", no_wrap=True)
    for col in ("state", "priority", "modality", "accession", "esc", "deadline", "attention", "started"):
        t.add_column(col)
    for f in found:
        t.add_row(
            f.referral_id,
            f.state + ("" if f.running else " (ended)"),
            f.priority,
            f.modality,
            f.accession_number,
            str(f.escalation_level or ""),
            _relative(f.stage_deadline, now),
            "[red]yes[/]" if f.needs_attention else "",
            _when(f.started_at),
        )
    console.print(t)
    return 0
