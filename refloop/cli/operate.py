"""Operator commands: act on a loop through the workflow's validated updates, and read the
latest escalation sweep. A rejected action prints the workflow's reason and exits non-zero."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from refloop.config import Settings
from refloop.domain import events as ev

console = Console()


def register(sub) -> None:
    def action(name: str, help: str, func, reason_required: bool = True):
        p = sub.add_parser(name, help=help)
        p.add_argument("ident", help="placer order number or accession number")
        p.add_argument("--reason", required=reason_required, type=_text, help="why (kept on the loop's timeline)")
        p.add_argument("--operator", default=_whoami(), help="who decides (default: your login)")
        p.set_defaults(func=func)
        return p

    action("close", "close a loop with a reason (the requester is told)", cmd_close)
    hold = action("resolve-hold", "decide an identity hold: accept the arrival identity or reject it", cmd_resolve_hold, reason_required=False)
    hold.add_argument("--decision", required=True, choices=["accept", "reject"])
    action("reopen", "reopen a finished loop at the furthest stage it reached", cmd_reopen)
    action("redeliver", "send the result (or the no-result notice) to the requester again", cmd_redeliver)
    ui = sub.add_parser("ui-columns", help="show the loop's search attributes as Temporal UI columns (prints a browser-console snippet)")
    ui.add_argument("--namespace", default=None)
    ui.set_defaults(func=cmd_ui_columns)
    st = sub.add_parser("stale", help="the latest escalation sweep: loops past their deadline, escalated or flagged")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stale)


def _text(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value.strip()


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "operator"


def cmd_close(args) -> int:
    return _act(args, "close_loop", ev.CloseLoop(reason=args.reason, operator=args.operator))


def cmd_resolve_hold(args) -> int:
    return _act(args, "resolve_identity_hold", ev.ResolveIdentityHold(decision=args.decision, note=args.reason or "", operator=args.operator))


def cmd_reopen(args) -> int:
    return _act(args, "reopen_loop", ev.ReopenLoop(reason=args.reason, operator=args.operator))


def cmd_redeliver(args) -> int:
    return _act(args, "redeliver", ev.Redeliver(reason=args.reason, operator=args.operator))


def _act(args, update: str, cmd: BaseModel) -> int:
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.service import RPCError, RPCStatusCode

    from refloop.cli.main import CliError
    from refloop.store.db import make_engine
    from refloop.store.repo import Store
    from refloop.temporal import connect, workflow_id
    from workflows.referral import LoopSummary

    settings = Settings()
    referral_id = Store(make_engine(settings.db_url)).resolve(args.ident) or args.ident

    async def go() -> LoopSummary:
        client = await connect(settings.temporal_address, settings.namespace)
        handle = client.get_workflow_handle(workflow_id(referral_id))
        return await handle.execute_update(update, cmd, result_type=LoopSummary)

    try:
        summary = asyncio.run(go())
    except WorkflowUpdateFailedError as err:
        reason = err.cause.message if err.cause is not None and hasattr(err.cause, "message") else str(err.cause or err)
        raise CliError(f"{args.command} {referral_id} rejected: {reason}") from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no running loop for {args.ident!r} (finished loops past their amendment window cannot be changed)") from None
        raise CliError(f"{args.command} {referral_id} failed: {err.message}") from None
    outcome = f" ({summary.outcome.value}: {summary.reason})" if summary.outcome else ""
    console.print(f"{args.command} {referral_id}: now [bold]{summary.stage.value}[/]{outcome}")
    return 0


def cmd_ui_columns(args) -> int:
    from refloop.ui import console_snippet

    namespace = args.namespace or Settings().namespace
    print(f"// Open the Temporal UI (workflows of namespace {namespace!r}), then paste this into the browser console:")
    print(console_snippet(namespace))
    return 0


def cmd_stale(args) -> int:
    from refloop.cli.loops import _relative
    from refloop.cli.main import CliError
    from refloop.store.db import make_engine
    from refloop.store.digests import DigestStore

    settings = Settings()
    row = DigestStore(make_engine(settings.db_url)).latest(settings.task_queue)
    if row is None:
        raise CliError(f"no sweep has run yet for task queue {settings.task_queue!r} (the worker schedules one every {settings.policy().sweep_interval})")
    digest = json.loads(row.digest_json)
    if args.json:
        print(json.dumps(digest, indent=2))
        return 0
    from activities.contracts import SweepDigest

    d = SweepDigest.model_validate(digest)
    more = " (truncated: more matched)" if d.truncated else ""
    console.print(
        f"Sweep at {d.swept_at:%Y-%m-%d %H:%M:%S} UTC: [bold]{len(d.loops)} stale[/]{more} — "
        f"{d.count('overdue')} overdue, {d.count('escalated')} escalated, {d.count('attention')} need attention"
    )
    if not d.loops:
        return 0
    t = Table(show_lines=False)
    t.add_column("referral", no_wrap=True)
    for col in ("state", "priority", "modality", "accession", "esc", "deadline", "why"):
        t.add_column(col)
    order = sorted(d.loops, key=lambda x: (-x.escalation_level, x.stage_deadline or d.swept_at))
    for loop in order:
        t.add_row(
            loop.referral_id, loop.state, loop.priority, loop.modality, loop.accession_number,
            str(loop.escalation_level or ""), _relative(loop.stage_deadline, d.swept_at), ", ".join(loop.reasons),
        )
    console.print(t)
    return 0
