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
    s = sub.add_parser("show", help="a referral's state and timeline")
    s.add_argument("ident", help="placer order number or accession number")
    s.add_argument("--json", action="store_true", help="print the loop as JSON")
    s.set_defaults(func=cmd_show)


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
    from temporalio.service import RPCError

    from refloop.store.db import make_engine
    from refloop.store.repo import Store
    from refloop.temporal import connect, workflow_id

    store = Store(make_engine(settings.db_url))
    referral_id = store.resolve(ident) or ident
    try:
        client = await connect(settings.temporal_address, settings.namespace)
        return await client.get_workflow_handle(workflow_id(referral_id)).query("state", result_type=Loop)
    except (RPCError, RuntimeError, Exception):  # not running (completed, unknown, server down)
        return store.get_loop(referral_id)


def render_loop(loop: Loop) -> None:
    ref = loop.referral
    head = Table(show_header=False, box=None)
    head.add_row("referral", ref.referral_id)
    head.add_row("state", f"[bold]{loop.stage.value}[/]" + (f"  ({loop.outcome.value}: {loop.outcome_reason})" if loop.outcome else ""))
    head.add_row("since", f"{loop.stage_since:%Y-%m-%d %H:%M:%S} UTC" if loop.stage_since else "-")
    head.add_row("service", f"{ref.service.procedure_code} {ref.service.procedure_display} [{ref.service.modality}] {ref.service.priority.value}")
    ids = ref.identifiers
    head.add_row("identifiers", f"accession={ids.accession_number or '-'} study={ids.study_instance_uid or '-'} sps={ids.sps_id or '-'}")
    if loop.hold:
        head.add_row("on hold", loop.hold.reason)
    if loop.escalation_level:
        head.add_row("escalation", f"level {loop.escalation_level} ({len(loop.escalations)} in all)")
    for a in loop.open_anomalies:
        head.add_row("[red]anomaly[/]", f"{a.code}: {a.detail}")
    console.print(head)
    t = Table(title="timeline")
    for col in ("received", "occurred", "event", "source", "applied", "note"):
        t.add_column(col)
    for e in loop.timeline:
        t.add_row(
            f"{e.received_at:%m-%d %H:%M:%S}",
            f"{e.occurred_at:%m-%d %H:%M:%S}" if e.occurred_at else "",
            e.kind,
            e.source,
            "yes" if e.applied else "[yellow]no[/]",
            e.note,
        )
    console.print(t)


def cmd_show(args) -> int:
    from refloop.cli.main import CliError

    loop = asyncio.run(fetch_loop(Settings(), args.ident))
    if loop is None:
        raise CliError(f"no referral found for {args.ident!r} (placer order number or accession)")
    if args.json:
        print(loop.model_dump_json(indent=2))
    else:
        render_loop(loop)
    return 0
