"""`refloop worklist`: the reporting worklist (studies archived, waiting for their report)."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.console import Console
from rich.table import Table

from refloop.config import Settings

console = Console()


def register(sub) -> None:
    p = sub.add_parser("worklist", help="the reporting worklist: archived studies waiting for a report, most urgent first")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the items as JSON")
    fmt.add_argument("--fhir", action="store_true", help="print a FHIR R4 Bundle of Tasks")
    p.set_defaults(func=cmd_worklist)


def _waited(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours // 24}d{hours % 24:02d}h" if hours >= 24 else f"{hours}h{rest // 60:02d}m"


def cmd_worklist(args) -> int:
    import json

    from refloop.gateways.worklist import as_bundle, reading_worklist
    from refloop.store.db import make_engine
    from refloop.store.imaging import ImagingStore

    settings = Settings()
    items = reading_worklist(ImagingStore(make_engine(settings.db_url)), settings.policy(), datetime.now(timezone.utc))
    if args.json:
        print(json.dumps([i.model_dump(mode="json") for i in items], indent=2))
        return 0
    if args.fhir:
        print(as_bundle(items).model_dump_json(indent=2, exclude_none=True))
        return 0
    t = Table(title=f"reporting worklist ({len(items)})")
    for col in ("priority", "accession", "study UID", "modality", "procedure", "waiting", "report due", "referral"):
        t.add_column(col)
    for i in items:
        due = f"{i.report_due:%Y-%m-%d %H:%M}" if i.report_due else "-"
        t.add_row(
            i.priority,
            i.accession_number or "-",
            i.study_instance_uid or "-",
            i.modality or "-",
            f"{i.procedure_code} {i.procedure_display}".strip() or "-",
            _waited(i.waiting_seconds),
            f"[red]{due} overdue[/]" if i.overdue else due,
            i.referral_id + (" [yellow](preliminary)[/]" if i.stage == "reported_preliminary" else ""),
        )
    console.print(t)
    return 0
