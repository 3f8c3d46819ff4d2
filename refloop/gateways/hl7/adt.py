"""ADT^A04 / A10 -> arrived; ADT^A40 / A47 -> patient_merged.

An arrival names a patient, not an order: it binds to that patient's (ID *and* issuer) loop that
awaits an arrival, or to an order if the sender added one. A merge concerns every open loop of
the prior patient ID; each gets the event, and their index entries follow the new ID.
"""

from __future__ import annotations

import hl7

from refloop.domain import events as ev
from refloop.gateways.hl7.errors import Hl7Error
from refloop.gateways.hl7.fields import first, patient_id, ts
from refloop.gateways.hl7.message import Header, Item, OrderRef, occurrence, order_groups
from refloop.gateways.intake import Keys


def translate_arrival(msg: hl7.Message, header: Header) -> list[Item]:
    pid = first(msg, "PID")
    if pid is None:
        raise Hl7Error(100, f"{header.message_type} has no PID segment: nobody arrived", "PID")
    patient = patient_id(pid, 3)
    if patient is None:
        raise Hl7Error(101, "no patient identifier in PID-3 to match the arrival against a booking", "PID", field=3)
    evn = first(msg, "EVN")
    event = ev.Arrived(
        event_id=header.event_id(1, 1),
        occurred_at=header.when(ts(evn, 6), ts(evn, 2)),  # EVN-6 event occurred, EVN-2 recorded
        source=header.source,
        patient=patient,
    )
    # Some senders append the order to the arrival: the strongest key then wins.
    groups = order_groups(msg)
    ref = OrderRef.of(first(groups[0], "ORC"), first(groups[0], "OBR")) if groups else OrderRef("", "", "")
    keys = ref.keys(patient=patient, match_patient_awaiting_arrival=True)
    return [Item(header.key(1, 1), event, keys)]


def translate_merge(msg: hl7.Message, header: Header) -> list[Item]:
    """One event per PID/MRG pair (A40 may merge several patients in one message)."""
    pairs = []
    pid = None
    for seg in msg:
        sid = str(seg[0])
        if sid == "PID":
            pid = seg
        elif sid == "MRG":
            pairs.append((pid, seg))
    if not pairs:
        raise Hl7Error(100, f"{header.message_type} has no MRG segment: the merge names no prior patient identifier", "MRG")
    evn = first(msg, "EVN")
    items = []
    for i, (pid, mrg) in enumerate(pairs, 1):
        seq = occurrence(msg, mrg)
        if pid is None:
            raise Hl7Error(100, "MRG without a PID before it: the merge names no surviving patient", "MRG", seq)
        new = patient_id(pid, 3)
        if new is None:
            raise Hl7Error(101, "no surviving patient identifier in PID-3", "PID", occurrence(msg, pid), 3)
        old = patient_id(mrg, 1)
        if old is None:
            raise Hl7Error(101, "no prior patient identifier in MRG-1", "MRG", seq, 1)
        if not old.issuer:
            # A merge happens within one assigning authority: the prior ID shares the new one's.
            old = old.model_copy(update={"issuer": new.issuer})
        if old == new:
            raise Hl7Error(103, "MRG-1 names the same identifier as PID-3: nothing to merge", "MRG", seq, 1)
        event = ev.PatientMerged(
            event_id=header.event_id(i, len(pairs)),
            occurred_at=header.when(ts(evn, 6), ts(evn, 2)),
            source=header.source,
            old=old,
            new=new,
        )
        items.append(Item(header.key(i, len(pairs)), event, Keys(patient=old, all_open_loops_of_patient=True)))
    return items
