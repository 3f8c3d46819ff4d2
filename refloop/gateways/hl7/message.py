"""What every translator needs from a message: its header, its order groups, one event per group."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import hl7

from refloop.domain.events import EventBase
from refloop.domain.referral import Patient
from refloop.gateways.hl7.errors import Hl7Error
from refloop.gateways.hl7.fields import Segment, entity_id, first, patient_id, val
from refloop.gateways.intake import Keys


@dataclass(frozen=True)
class Header:
    sender: str  # MSH-3/MSH-4: idempotency keys are scoped by it
    control_id: str  # MSH-10
    message_type: str  # "ORM^O01"
    sent_at: datetime | None  # MSH-7
    version: str  # MSH-12

    def key(self, index: int, total: int) -> str:
        """The inbox key of one event: MSH-10, or MSH-10#n when a message carries several."""
        return self.control_id + (f"#{index}" if total > 1 else "")

    def event_id(self, index: int, total: int) -> str:
        return f"hl7:{self.sender}:{self.key(index, total)}"

    @property
    def source(self) -> str:
        return f"hl7:{self.sender}"

    def when(self, *candidates: datetime | None) -> datetime:
        """The first time given, else when the message was sent, else now."""
        for c in (*candidates, self.sent_at):
            if c is not None:
                return c
        return datetime.now(timezone.utc)


@dataclass
class Item:
    """One event a message carries, with the keys that find its referral."""

    message_key: str
    event: EventBase
    keys: Keys


def order_groups(msg: hl7.Message | list[Segment]) -> list[list[Segment]]:
    """Split at each ORC (or at an OBR that is not its ORC's first): one group per order.
    What follows an order's ORC/OBR (TQ1, OBX, IPC, NTE, Z-segments) belongs to it."""
    groups: list[list[Segment]] = []
    for seg in msg:
        sid = str(seg[0])
        if sid == "ORC" or (sid == "OBR" and (not groups or first(groups[-1], "OBR") is not None)):
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
    return groups


def occurrence(msg: hl7.Message, seg: Segment) -> int:
    """Which occurrence of its segment ID `seg` is (1-based), for ERR-2."""
    sid = str(seg[0])
    n = 0
    for s in msg:
        if str(s[0]) == sid:
            n += 1
            if s is seg:
                return n
    return 1


def table_value(msg: hl7.Message, seg: Segment, field: int, table: dict[str, str], what: str) -> str:
    """A required coded field whose value must be one we handle (101 if empty, 103 if unknown)."""
    sid, seq = str(seg[0]), occurrence(msg, seg)
    value = val(seg, field).upper()
    if not value:
        raise Hl7Error(101, f"{what} ({sid}-{field}) is empty", sid, seq, field)
    if value not in table:
        known = ", ".join(f"{k} ({v})" for k, v in table.items())
        raise Hl7Error(103, f"{what} {value!r} is not supported; supported: {known}", sid, seq, field)
    return value


def patient_of(pid: Segment | None) -> Patient | None:
    ident = patient_id(pid, 3)
    if ident is None:
        return None
    family, given = val(pid, 5, 1, 1), val(pid, 5, 2)
    return Patient(id=ident, name=f"{family}^{given}" if given else family, birth_date=val(pid, 7)[:8], sex=val(pid, 8))


@dataclass(frozen=True)
class OrderRef:
    """The order numbers a group names (ORC first, then OBR)."""

    placer: str
    placer_system: str
    filler: str

    @classmethod
    def of(cls, orc: Segment | None, obr: Segment | None) -> OrderRef:
        placer, system = entity_id(orc, 2)
        if not placer:
            placer, system = entity_id(obr, 2)
        return cls(placer, system, entity_id(orc, 3)[0] or entity_id(obr, 3)[0])

    def keys(self, **more) -> Keys:
        return Keys(placer_order_number=self.placer, placer_system=self.placer_system, filler_order_number=self.filler, **more)
