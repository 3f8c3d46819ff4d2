"""`refloop inbox`: what the gateways received and what became of it.

The table shows no message content (no names, no MRNs); `--show ID` prints one raw message.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlmodel import Session

from refloop.config import Settings
from refloop.store.tables import InboxRow

console = Console()

FILTERS = ("rejected", "parked", "ambiguous", "failed", "late")
_STYLE = {"rejected": "red", "failed": "red", "ambiguous": "yellow", "parked": "cyan"}


def register(sub) -> None:
    p = sub.add_parser("inbox", help="messages the gateways received, with their outcome (no message content)")
    which = p.add_mutually_exclusive_group()
    for status in FILTERS:
        which.add_argument(f"--{status}", dest="status", action="store_const", const=status, help=f"only {status} messages")
    which.add_argument("--show", type=int, metavar="ID", help="one message in full, raw content included")
    p.add_argument("--limit", type=int, default=50, help="newest N (default 50)")
    p.set_defaults(func=cmd_inbox, status=None)


def _inbox():
    from refloop.store.db import make_engine
    from refloop.store.repo import InboxStore

    return InboxStore(make_engine(Settings().db_url))


def cmd_inbox(args) -> int:
    inbox = _inbox()
    if args.show is not None:
        return show(inbox, args.show)
    rows = inbox.list(args.status, args.limit)
    t = Table(title=f"inbox ({args.status or 'all'}, newest {len(rows)})")
    for col in ("id", "received", "protocol", "sender", "type", "status", "referral", "error"):
        t.add_column(col, overflow="fold")
    for r in rows:
        # Text(): values are data, never rich markup (an error names e.g. "ORC[2]-1").
        cells = [str(r.id), f"{r.received_at:%Y-%m-%d %H:%M:%S}", r.protocol, r.sender, r.message_type]
        t.add_row(
            *map(Text, cells),
            Text(r.status, style=_STYLE.get(r.status, "")),
            Text(r.referral_id),
            Text(_short(r.error)),  # our own texts: they name fields, never their content
        )
    console.print(t)
    return 0


def show(inbox, row_id: int) -> int:
    from refloop.cli.main import CliError

    with Session(inbox.engine) as s:
        row = s.get(InboxRow, row_id)
    if row is None:
        raise CliError(f"no inbox message {row_id}")
    head = Table(show_header=False, box=None)
    for label, value in (
        ("id", str(row.id)),
        ("received", f"{row.received_at:%Y-%m-%d %H:%M:%S} UTC"),
        ("protocol", row.protocol),
        ("sender", row.sender),
        ("message key", row.message_key),
        ("type", row.message_type),
        ("status", row.status),
        ("referral", row.referral_id or "-"),
        ("event", f"{row.event_kind} {row.event_id}".strip() or "-"),
        ("error", row.error or "-"),
    ):
        head.add_row(label, Text(value))
    console.print(head)
    console.rule("raw message")
    # HL7 separates segments with CR: print one per line. No markup: the content is data.
    console.print(row.raw.replace("\r\n", "\n").replace("\r", "\n"), markup=False, highlight=False, soft_wrap=True)
    return 0


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
