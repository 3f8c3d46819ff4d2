"""Where a loop stands, in the requester's vocabularies: FHIR Task.status and HL7 ORC-5 (table 0038).

The status always follows the loop's stage at the moment of the milestone, so what the
requester sees is where the loop really was; the milestone itself becomes the business status.
"""

from __future__ import annotations

from dataclasses import dataclass

from refloop.domain.loop import Stage


@dataclass(frozen=True)
class OrderStatus:
    task: str  # FHIR Task.status
    orc5: str  # HL7 ORC-5 order status (table 0038)


_BY_STAGE: dict[Stage, OrderStatus] = {
    Stage.NEW: OrderStatus("received", "IP"),
    Stage.ORDERED: OrderStatus("accepted", "IP"),
    Stage.SCHEDULED: OrderStatus("accepted", "SC"),
    Stage.ARRIVED: OrderStatus("in-progress", "IP"),
    Stage.IN_PROGRESS: OrderStatus("in-progress", "IP"),
    Stage.ACQUIRED: OrderStatus("in-progress", "IP"),
    Stage.ARCHIVED: OrderStatus("in-progress", "IP"),
    Stage.REPORTED_PRELIMINARY: OrderStatus("in-progress", "A"),
    Stage.REPORTED_FINAL: OrderStatus("completed", "CM"),
    Stage.DELIVERED: OrderStatus("completed", "CM"),
    Stage.CLOSED: OrderStatus("completed", "CM"),
    Stage.ON_HOLD: OrderStatus("on-hold", "HD"),
    Stage.DID_NOT_ATTEND: OrderStatus("cancelled", "CA"),
    Stage.CANCELLED: OrderStatus("cancelled", "CA"),
    Stage.NOT_PERFORMED: OrderStatus("failed", "DC"),
    Stage.ENTERED_IN_ERROR: OrderStatus("entered-in-error", "CA"),
}

MILESTONE_LABELS = {
    "accepted": "order accepted",
    "booked": "booked",
    "arrived": "patient arrived",
    "performed": "procedure performed",
    "report_available": "report available",
    "delayed": "delayed",
    "cancelled": "cancelled",
    "did_not_attend": "patient did not attend",
    "not_performed": "not performed",
    "reopened": "reopened by the department",
}


def order_status(stage: str | Stage) -> OrderStatus:
    return _BY_STAGE[Stage(stage)]


def milestone_text(milestone: str, detail: str = "") -> str:
    label = MILESTONE_LABELS.get(milestone, milestone.replace("_", " "))
    if milestone == "booked" and detail:
        return f"booked for {detail}"
    return f"{label}: {detail}" if detail else label
