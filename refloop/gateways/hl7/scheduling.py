"""SIU^S12 booked, S13 rescheduled, S15 cancelled, S26 did not attend.

A booking is tied to its referral by the order numbers in SCH-26 (placer) / SCH-27 (filler);
appointment IDs alone (SCH-1/SCH-2) name no order, so such a message cannot be matched.
"""

from __future__ import annotations

import hl7

from refloop.domain import events as ev
from refloop.domain.referral import Appointment, Identifiers
from refloop.gateways.hl7.errors import Hl7Error
from refloop.gateways.hl7.fields import entity_id, first, patient_id, place, ts, val
from refloop.gateways.hl7.message import Header, Item, OrderRef


def translate(msg: hl7.Message, header: Header) -> list[Item]:
    sch = first(msg, "SCH")
    if sch is None:
        raise Hl7Error(100, f"{header.message_type} has no SCH segment (required): nothing says which order the appointment is for", "SCH")
    placer, system = entity_id(sch, 26)
    ref = OrderRef(placer, system, entity_id(sch, 27)[0])
    if not ref.placer and not ref.filler:
        raise Hl7Error(
            101,
            "the appointment names no order: SCH-26 (placer order number) and SCH-27 (filler order number) are empty, "
            "so it cannot be tied to a referral",
            "SCH",
            field=26,
        )
    common = dict(event_id=header.event_id(1, 1), occurred_at=header.when(), source=header.source)
    trigger = header.message_type.split("^")[1]
    reason = val(sch, 6, 2) or val(sch, 6, 1)  # SCH-6 event reason
    event: ev.EventBase
    if trigger == "S12":
        event = ev.Scheduled(
            **common,
            appointment=_appointment(msg, sch),
            identifiers=Identifiers(placer_system=ref.placer_system, filler_order_number=ref.filler),
            patient=patient_id(first(msg, "PID"), 3),
        )
    elif trigger == "S13":
        event = ev.Rescheduled(**common, appointment=_appointment(msg, sch))
    elif trigger == "S15":
        event = ev.AppointmentCancelled(**common, reason=f"appointment cancelled: {reason}" if reason else "appointment cancelled")
    else:  # S26
        event = ev.DidNotAttend(**common, note=f"patient did not attend: {reason}" if reason else "patient did not attend (SIU^S26)")
    return [Item(header.key(1, 1), event, ref.keys())]


def _appointment(msg: hl7.Message, sch) -> Appointment:
    tq1, ais, aig, ail, aip = (first(msg, s) for s in ("TQ1", "AIS", "AIG", "AIL", "AIP"))
    start = ts(tq1, 7) or ts(sch, 11, 4) or ts(ais, 4) or ts(aig, 8) or ts(ail, 6) or ts(aip, 6)
    return Appointment(start=start, station_name=val(aig, 3, 2) or val(aig, 3, 1), location=place(ail, 3))
