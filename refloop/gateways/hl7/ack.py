"""Original-mode ACKs: AA accepted; AR rejected (resending it unchanged will not help);
AE error on our side (the event was not taken; the sender should resend).

The ACK copies MSH-10 into MSA-2 and MSH-18 (which python-hl7's create_ack leaves out), and
carries an ERR segment naming segment, occurrence, field, HL7 error code and a human reason.
"""

from __future__ import annotations

import re

import hl7

from refloop.gateways.hl7.errors import Hl7Error

RECEIVER = "REFLOOP"
# A stand-in header for messages whose own MSH is missing or unreadable.
_NO_HEADER = "MSH|^~\\&|||" + RECEIVER + "||||"


def build_ack(msg: hl7.Message | None, code: str, text: str = "", error: Hl7Error | None = None) -> str:
    source = _header_only(msg)
    msh = source[0]
    ack = source.create_ack(code, application=None if _field(msh, 5) else RECEIVER)
    if not _field(msh, 9).strip(source.separators[3]):
        ack[0].assign_field("ACK", 9)
    charset = _field(msh, 18)
    if charset:
        ack[0].assign_field(charset, 18)
    if text:
        ack[1].assign_field(ack.escape(text[:80]), 3)  # MSA-3 (ST, 80)
    out = str(ack).rstrip("\r")
    if error is not None:
        out += "\r" + _err_segment(ack, error, _field(msh, 12))
    return out + "\r"


def _header_only(msg: hl7.Message | None) -> hl7.Message:
    """The message's MSH alone, padded so that create_ack finds MSH-9 with its components
    even when the sender truncated or garbled the header."""
    text = str(msg[0]) if msg is not None and str(msg[0][0]) == "MSH" else _NO_HEADER
    fsep, csep = text[3], (text[4] if len(text) > 4 and text[4] != text[3] else "^")
    parts = text.split(fsep)
    parts += [""] * (12 - len(parts))
    if csep not in parts[8]:
        parts[8] += csep  # MSH-9 = parts[8] (MSH-1 is the separator itself)
    return hl7.parse(fsep.join(parts))


def _field(seg: hl7.Segment, n: int) -> str:
    """A whole field as sent (components kept), "" if absent."""
    return str(seg[n]) if n < len(seg) else ""


def _err_segment(ack: hl7.Message, error: Hl7Error, version: str) -> str:
    f, _rep, c, s = ack.separators[1:5]
    name = ack.escape(error.name)
    if re.match(r"^2\.[0-4](\D|$)", version):
        # v2.1-2.4: ERR-1 (ELD) = segment ^ sequence ^ field ^ code&text&table
        eld = c.join([error.segment, str(error.sequence), str(error.field or ""), s.join([str(error.code), name, "HL70357"])])
        return f"ERR{f}{eld}"
    location = c.join([error.segment, str(error.sequence), str(error.field or ""), "", str(error.component or "")]).rstrip(c)
    fields = [
        "ERR",
        "",  # ERR-1 (withdrawn in 2.5)
        location if error.segment else "",  # ERR-2 error location
        c.join([str(error.code), name, "HL70357"]),  # ERR-3 HL7 error code
        "E",  # ERR-4 severity
        "", "", "",  # ERR-5..7
        ack.escape(error.reason),  # ERR-8 user message
    ]
    return f.join(fields)
