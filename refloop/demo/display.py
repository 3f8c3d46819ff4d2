"""What `refloop demo` shows: each step as it is sent and its answer, the loops as they move,
then the summary. On a terminal a live table; otherwise (CI, a pipe) one line per step."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from refloop.demo.ehr import Chart
from refloop.demo.replay import Referral
from refloop.domain.loop import Loop
from refloop.outbound.fhir import resource_id

OK, NOT_OK = "✓", "✗"


@dataclass
class Row:
    step: str = ""
    answer: str = ""
    ok: bool = True
    stage: str = "-"


@dataclass
class Result:
    """One loop at the end of the day."""

    ref: Referral
    loop: Loop | None
    chart: Chart

    @property
    def met(self) -> bool:
        return self.loop is not None and not self.ref.failure and self.ref.intended.met(self.loop)


class Display:
    def __init__(self, console: Console, referrals: list[Referral], title: str):
        self.console = console
        self.refs = referrals
        self.by_resource = {resource_id(r.referral_id): r for r in referrals}
        self.rows = {r.n: Row() for r in referrals}
        self.recent: deque[Text] = deque(maxlen=8)
        self.title = title
        self.live: Live | None = None
        self.started = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=8)
            self.live.__enter__()
        else:
            self.console.print(self.title)
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.update(self._render())
            self.live.__exit__(*exc)
            self.live = None

    # --- what the replay, the EHR and the pager report -----------------------------------------

    def step(self, ref: Referral, protocol: str, what: str) -> None:
        row = self.rows[ref.n]
        row.step, row.answer, row.ok = f"{protocol} {what}", "…", True
        self._refresh()

    def answer(self, ref: Referral, text: str, ok: bool) -> None:
        row = self.rows[ref.n]
        row.answer, row.ok = text, ok
        self._log(ref, row.step, text, ok)

    def stage(self, ref: Referral, stage: str) -> None:
        row = self.rows[ref.n]
        if row.stage != stage:
            row.stage = stage
            self._log(ref, "loop", stage, True)

    def waiting(self, ref: Referral, what: str) -> None:
        row = self.rows[ref.n]
        row.step, row.answer, row.ok = f"waiting for {what}", "", True
        self._log(ref, f"waiting for {what}", "", None)

    def failed(self, ref: Referral, why: str) -> None:
        row = self.rows[ref.n]
        row.answer, row.ok = why, False
        self._log(ref, "stopped", why, False)

    def ehr(self, resource: str, text: str, ok: bool) -> None:
        """What the requester's EHR received or did, for the referral the resource belongs to."""
        if "Task update" in text:
            return  # status updates: counted in the summary, too many to list
        self._log(self.by_resource.get(resource), "", text, ok)

    def page(self, page: dict) -> None:
        """An escalation on the department's pager."""
        ref = next((r for r in self.refs if r.referral_id == page.get("referral_id")), None)
        self._log(ref, f"⚠ pager: {page.get('level_name')}", str(page.get("reason", "")), None)

    # --- rendering ------------------------------------------------------------------------------

    def _log(self, ref: Referral | None, what: str, answer: str, ok: bool | None) -> None:
        """One line: ok True green, False red, None (a warning that is part of the story) yellow."""
        line = Text(f"{datetime.now():%H:%M:%S}  ", style="dim")
        line.append(f"{ref.referral_id if ref else '':<20} ", style="cyan")
        line.append(what, style="yellow" if ok is None else "")
        if answer and what:
            line.append("  → " if ok is not None else "  ")
        line.append(answer, style="yellow" if ok is None else "green" if ok else "bold red")
        if self.live:
            self.recent.append(line)
            self._refresh()
        else:
            self.console.print(line, soft_wrap=True)

    def _refresh(self) -> None:
        if self.live:
            self.live.update(self._render())

    def _render(self) -> Group:
        table = Table(expand=True, title=self.title, title_justify="left", pad_edge=False)
        table.add_column("referral", style="cyan", no_wrap=True)
        table.add_column("path", overflow="ellipsis", no_wrap=True, ratio=3)
        table.add_column("step", overflow="ellipsis", no_wrap=True, ratio=3)
        table.add_column("answer", overflow="ellipsis", no_wrap=True, ratio=2)
        table.add_column("loop", no_wrap=True)
        for ref in self.refs:
            row = self.rows[ref.n]
            table.add_row(ref.referral_id, ref.path, row.step, Text(row.answer, style="green" if row.ok else "bold red"), row.stage)
        elapsed = Text(f"{time.monotonic() - self.started:.0f} s", style="dim")
        return Group(table, *self.recent, elapsed)

    # --- the end of the day ---------------------------------------------------------------------

    def summary(self, results: list[Result]) -> None:
        table = Table(title="The day's loops", title_justify="left")
        for name in ("referral", "path", "state · outcome", "events", "esc.", "requester got", "intended", ""):
            table.add_column(name, no_wrap=name in ("referral", "events", "esc.", ""))
        for res in results:
            loop = res.loop
            if loop is None:
                actual, events, escalations = "no loop", "-", "-"
            else:
                actual = loop.stage.value.replace("_", " ") + (f" · {loop.outcome.value.replace('_', ' ')}" if loop.outcome else "")
                events, escalations = str(len(loop.timeline)), str(len(loop.escalations))
            mark = Text(OK, style="bold green") if res.met else Text(NOT_OK, style="bold red")
            got = res.chart.summary()
            if res.chart.milestones:
                got += f" · {len(res.chart.milestones)} updates"
            table.add_row(res.ref.referral_id, res.ref.path, actual, events, escalations, got, res.ref.intended.describe(), mark)
        self.console.print(table)
        for res in results:
            if not res.met:
                why = res.ref.failure or (f"ended {res.loop.stage.value}" if res.loop else "no loop")
                self.console.print(Text(f"{NOT_OK} {res.ref.referral_id}: {why}", style="red"))
