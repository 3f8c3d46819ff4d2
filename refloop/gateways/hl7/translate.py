"""Bytes of one HL7 v2 message -> the typed events it carries, or what is wrong with it. Pure.

    translate(data) -> Translation(items=[Item(message_key, event, keys), ...] | error=Hl7Error)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import hl7

from refloop.domain import events as ev
from refloop.gateways.hl7 import adt, orders, results, scheduling
from refloop.gateways.hl7.decode import decode_message
from refloop.gateways.hl7.errors import Hl7Error
from refloop.gateways.hl7.fields import hd, ts, val
from refloop.gateways.hl7.message import Header, Item

Translator = Callable[[hl7.Message, Header], list[Item]]

SUPPORTED: dict[str, Translator] = {
    "ORM^O01": orders.translate,
    "OMI^O23": orders.translate,
    "OMG^O19": orders.translate,
    "SIU^S12": scheduling.translate,
    "SIU^S13": scheduling.translate,
    "SIU^S15": scheduling.translate,
    "SIU^S26": scheduling.translate,
    "ADT^A04": adt.translate_arrival,
    "ADT^A10": adt.translate_arrival,
    "ADT^A40": adt.translate_merge,
    "ADT^A47": adt.translate_merge,
    "ORU^R01": results.translate,
}
SUPPORTED_TEXT = ", ".join(SUPPORTED)


@dataclass
class Translation:
    text: str  # the message as received, decoded: what the inbox keeps
    charset: str  # replies go back in it
    message: hl7.Message | None = None
    header: Header | None = None
    items: list[Item] = field(default_factory=list)
    error: Hl7Error | None = None
    digest: str = ""  # sha256 of the bytes received

    @property
    def message_key(self) -> str:
        """Idempotency key: MSH-10. A rejected message is also keyed by its content, so that a
        garbled message reusing a control ID is kept too, and a corrected resend is not
        mistaken for the rejected one."""
        control = self.header.control_id if self.header else ""
        if not control:
            return f"sha256:{self.digest}"
        return f"{control}@{self.digest[:16]}" if self.error else control

    @property
    def sender(self) -> str:
        return self.header.sender if self.header else ""

    @property
    def message_type(self) -> str:
        return self.header.message_type if self.header else ""


def translate(data: bytes, processing_ids: Collection[str] = ("P",), requester_endpoints: Mapping[str, str] | None = None) -> Translation:
    """`requester_endpoints` maps a placer (MSH-3 application, or "application/facility") to
    where its results go, for orders that do not say so themselves."""
    digest = hashlib.sha256(data).hexdigest()[:32]
    try:
        decoded = decode_message(data)
    except Hl7Error as err:
        return Translation(data.decode("latin_1"), "latin_1", error=err, digest=digest)
    t = Translation(decoded.text, decoded.charset, digest=digest)
    text = decoded.normalised
    if not re.match(r"MSH[^A-Za-z0-9\s]", text):
        t.error = Hl7Error(100, "not an HL7 message: it must begin with an MSH segment", "MSH")
        return t
    try:
        t.message = hl7.parse(text)
        t.header = _header(t.message)
        _check_header(t.message, t.header, processing_ids)
        t.items = SUPPORTED[t.header.message_type](t.message, t.header)
        _route_results(t, requester_endpoints or {})
    except Hl7Error as err:
        if err.code == 100 and t.message is not None and len(t.message) == 1:
            err.reason += " (the message has a single segment: are the segment separators missing?)"
        t.error = err
    except Exception as err:  # noqa: BLE001 - a parser or model failure must still be answered
        t.error = Hl7Error(207, f"the message could not be read ({type(err).__name__})")
    return t


def _route_results(t: Translation, endpoints: Mapping[str, str]) -> None:
    assert t.header is not None and t.message is not None
    endpoint = endpoints.get(t.header.sender) or endpoints.get(hd(t.message[0], 3))
    for item in t.items:
        if endpoint and isinstance(item.event, ev.OrderPlaced) and not item.event.requester.endpoint:
            item.event.requester = item.event.requester.model_copy(update={"endpoint": endpoint, "channel": "fhir"})


def _header(msg: hl7.Message) -> Header:
    msh = msg[0]
    mtype, trigger = val(msh, 9, 1).upper(), val(msh, 9, 2).upper()
    return Header(
        sender="/".join(p for p in (hd(msh, 3), hd(msh, 4)) if p),
        control_id=val(msh, 10),
        message_type=f"{mtype}^{trigger}" if trigger else mtype,
        sent_at=ts(msh, 7),
        version=val(msh, 12, 1),
    )


def _check_header(msg: hl7.Message, header: Header, processing_ids: Collection[str]) -> None:
    msh = msg[0]
    if not header.message_type:
        raise Hl7Error(101, "message type (MSH-9) is empty", "MSH", field=9)
    if "^" not in header.message_type:
        raise Hl7Error(101, f"message type {header.message_type!r} (MSH-9) has no trigger event (MSH-9.2)", "MSH", field=9, component=2)
    if not header.control_id:
        raise Hl7Error(101, "message control ID (MSH-10) is empty: it is needed to acknowledge the message and to recognise resends", "MSH", field=10)
    processing = val(msh, 11, 1).upper()
    if processing and processing not in processing_ids:
        raise Hl7Error(
            202, f"processing ID {processing!r} (MSH-11) is not accepted here; this receiver takes {'/'.join(sorted(processing_ids))}", "MSH", field=11
        )
    if header.version and not re.match(r"^2\.\d", header.version):
        raise Hl7Error(203, f"HL7 version {header.version!r} (MSH-12) is not supported; 2.x is", "MSH", field=12)
    if header.message_type not in SUPPORTED:
        mtype = header.message_type.split("^")[0]
        known_type = any(k.startswith(mtype + "^") for k in SUPPORTED)
        raise Hl7Error(
            201 if known_type else 200,
            f"{header.message_type} is not supported; supported: {SUPPORTED_TEXT}",
            "MSH",
            field=9,
        )
