"""Finding loops through Temporal visibility (the search attributes the workflow keeps up to date).

Used by the sweep and by `refloop list`. The query does the filtering on the server, so the
cost of a stale-loop search grows with the loops that match, not with all open loops.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecution

from refloop import temporal as names


class LoopListing(BaseModel):
    """One loop as visibility shows it (no PHI: identifiers and codes only)."""

    referral_id: str
    workflow_id: str
    state: str = ""
    priority: str = ""
    modality: str = ""
    accession_number: str = ""
    outcome: str = ""
    escalation_level: int = 0
    stage_deadline: datetime | None = None
    needs_attention: bool = False
    started_at: datetime | None = None
    running: bool = True

    def stale_reasons(self, now: datetime) -> list[str]:
        """Why this loop is stale: its deadline passed, it escalated, or it needs an operator."""
        out = []
        if self.stage_deadline and self.stage_deadline < now:
            out.append("overdue")
        if self.escalation_level > 0:
            out.append("escalated")
        if self.needs_attention:
            out.append("attention")
        return out


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ts(at: datetime) -> str:
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stale_clause(now: datetime) -> str:
    """Past its stage deadline (its own timer has not moved it on) or already escalated."""
    return f"({names.STAGE_DEADLINE.name} < {_quote(_ts(now))} OR {names.ESCALATION_LEVEL.name} > 0)"


def loops_query(
    *,
    task_queue: str = "",
    state: str = "",
    stale_at: datetime | None = None,
    attention: bool = False,
    running: bool = True,
    either: bool = False,
) -> str:
    """A visibility query for referral loops. `stale_at` and `attention` together mean both,
    or either one when `either` (the sweep's question)."""
    parts = [f"WorkflowType = {_quote(names.WORKFLOW_TYPE)}"]
    if running:
        parts.append('ExecutionStatus = "Running"')
    if task_queue:
        parts.append(f"TaskQueue = {_quote(task_queue)}")
    if state:
        parts.append(f"{names.LOOP_STATE.name} = {_quote(state)}")
    flags = []
    if stale_at is not None:
        flags.append(stale_clause(stale_at))
    if attention:
        flags.append(f"{names.NEEDS_ATTENTION.name} = true")
    if flags:
        parts.append("(" + " OR ".join(flags) + ")" if either else " AND ".join(flags))
    return " AND ".join(parts)


def listing(execution: WorkflowExecution) -> LoopListing:
    sa = execution.typed_search_attributes
    return LoopListing(
        referral_id=sa.get(names.REFERRAL_ID) or execution.id.removeprefix("referral-"),
        workflow_id=execution.id,
        state=sa.get(names.LOOP_STATE) or "",
        priority=sa.get(names.PRIORITY) or "",
        modality=sa.get(names.MODALITY) or "",
        accession_number=sa.get(names.ACCESSION_NUMBER) or "",
        outcome=sa.get(names.OUTCOME) or "",
        escalation_level=sa.get(names.ESCALATION_LEVEL) or 0,
        stage_deadline=sa.get(names.STAGE_DEADLINE),
        needs_attention=bool(sa.get(names.NEEDS_ATTENTION)),
        started_at=execution.start_time,
        running=execution.status is not None and execution.status.name == "RUNNING",
    )


async def find_loops(client: Client, query: str, limit: int = 1000) -> tuple[list[LoopListing], bool]:
    """Matching loops (at most `limit`) and whether there were more."""
    found: list[LoopListing] = []
    async for execution in client.list_workflows(query, page_size=min(limit + 1, 1000)):
        if len(found) >= limit:
            return found, True
        found.append(listing(execution))
    return found, False
