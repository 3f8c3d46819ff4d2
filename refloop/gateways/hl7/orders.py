"""ORM^O01, OMI^O23, OMG^O19 -> order_placed / referral_cancelled / unable_to_perform / order_changed.

ORC-1 (table 0119) decides: NW new, CA/OC cancelled, DC/OD discontinued, XO changed.
Imaging identifiers come from IPC (OMI) or, in IHE's v2.3.1 ORM, from OBR-18/19/20 and ZDS-1.
"""

from __future__ import annotations

import re

import hl7

from refloop.domain import events as ev
from refloop.domain.referral import Appointment, Identifiers, Patient, Requester, ServicePlan
from refloop.gateways.hl7.errors import Hl7Error
from refloop.gateways.hl7.fields import Segment, coded, first, person, priority, reps, ts, val
from refloop.gateways.hl7.message import Header, Item, OrderRef, occurrence, order_groups, patient_of, table_value
from refloop.gateways.intake import Keys

ORDER_CONTROLS = {
    "NW": "new order",
    "CA": "cancel",
    "OC": "cancelled by the department",
    "DC": "discontinue",
    "OD": "discontinued by the department",
    "XO": "change",
}
_CID_9300 = re.compile(r"^1105\d\d$")  # DCM procedure discontinuation reasons


def translate(msg: hl7.Message, header: Header) -> list[Item]:
    groups = order_groups(msg)
    if not groups or first(groups[0], "ORC") is None:
        raise Hl7Error(100, f"{header.message_type} has no ORC segment: nothing says what to do with the order", "ORC")
    patient = patient_of(first(msg, "PID"))
    items = []
    for i, group in enumerate(groups, 1):
        orc, obr = first(group, "ORC"), first(group, "OBR")
        if orc is None:
            assert obr is not None
            raise Hl7Error(100, "OBR without an ORC before it (each order needs its ORC)", "OBR", occurrence(msg, obr))
        event, keys = _order_event(msg, group, orc, obr, header, i, len(groups), patient)
        items.append(Item(header.key(i, len(groups)), event, keys))
    return items


def _order_event(
    msg: hl7.Message, group: list[Segment], orc: Segment, obr: Segment | None, header: Header, i: int, total: int, patient: Patient | None
) -> tuple[ev.EventBase, Keys]:
    seq = occurrence(msg, orc)
    control = table_value(msg, orc, 1, ORDER_CONTROLS, "order control")
    ref = OrderRef.of(orc, obr)
    ipc, tq1 = first(group, "IPC"), first(group, "TQ1")
    ids = Identifiers(
        placer_system=ref.placer_system,
        filler_order_number=ref.filler,
        accession_number=val(ipc, 1) or val(obr, 18),
        requested_procedure_id=val(ipc, 2) or val(obr, 19),
        sps_id=val(ipc, 4) or val(obr, 20),
        study_instance_uid=val(ipc, 3) or val(first(group, "ZDS"), 1),
    )
    keys = ref.keys(
        accession_number=ids.accession_number,
        study_instance_uid=ids.study_instance_uid,
        sps_id=ids.sps_id,
        requested_procedure_id=ids.requested_procedure_id,
    )
    common = dict(event_id=header.event_id(i, total), occurred_at=header.when(ts(orc, 9)), source=header.source)
    if control == "NW":
        if not ref.placer:
            raise Hl7Error(101, "placer order number (ORC-2 / OBR-2) is empty: it is the referral's identity", "ORC", seq, 2)
        if obr is None:
            raise Hl7Error(100, "new order without an OBR segment: the order names no service", "OBR")
        event = ev.OrderPlaced(
            **common,
            placer_order_number=ref.placer,
            patient=patient,
            requester=_requester(orc, obr),
            service=_service(orc, obr, ipc, tq1),
            identifiers=ids,
            appointment=_appointment(orc, obr, ipc, tq1),
        )
        return event, keys
    if not keys.lookup() and not ref.placer:
        raise Hl7Error(101, f"{ORDER_CONTROLS[control]} names no order: ORC-2 (placer) and ORC-3 (filler order number) are empty", "ORC", seq, 2)
    code, text, _ = coded(orc, 16)  # order control code reason
    if control in ("CA", "OC"):
        duplicate = "DUP" in f"{code} {text}".upper()
        reason = "duplicate" if duplicate else ("requester" if control == "CA" else "other")
        return ev.ReferralCancelled(**common, reason=reason, note=text or code), keys
    if control in ("DC", "OD"):
        reason = text or (code if not _CID_9300.match(code) else "") or f"order discontinued (ORC-1 {control})"
        return ev.UnableToPerform(**common, reason_code=code if _CID_9300.match(code) else "", reason=reason), keys
    requester = _requester(orc, obr)
    changed = ev.OrderChanged(
        **common,
        service=_service(orc, obr, ipc, tq1) if obr is not None else None,
        requester=requester if requester != Requester() else None,
    )
    return changed, keys


def _requester(orc: Segment, obr: Segment | None) -> Requester:
    return Requester(
        practitioner=person(orc, 12) or person(obr, 16),
        organization=val(orc, 21) or val(orc, 17, 2) or val(orc, 17, 1),
    )


def _service(orc: Segment, obr: Segment | None, ipc: Segment | None, tq1: Segment | None) -> ServicePlan:
    code, display, system = coded(obr, 4)
    if not code:
        code, display, system = coded(ipc, 6)
    return ServicePlan(
        procedure_code=code,
        procedure_system=system,
        procedure_display=display,
        modality=val(ipc, 5) or val(obr, 24),
        priority=priority(val(tq1, 9), val(orc, 7, 6), val(obr, 27, 6), val(obr, 5)),
    )


def _appointment(orc: Segment, obr: Segment | None, ipc: Segment | None, tq1: Segment | None) -> Appointment | None:
    start = ts(tq1, 7) or ts(orc, 7, 4) or ts(obr, 27, 4)
    aets = [a for r in range(1, reps(ipc, 9) + 1) if (a := val(ipc, 9, rep=r))]
    appointment = Appointment(start=start, station_aet=aets, station_name=val(ipc, 7), location=val(ipc, 8))
    return appointment if appointment != Appointment() else None
