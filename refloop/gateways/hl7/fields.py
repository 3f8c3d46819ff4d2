"""Safe reads of HL7 v2 data types over python-hl7's parse tree.

Real feeds leave fields out, truncate segments and repeat things; every read here returns ""
(or None) for what is not there instead of raising.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import hl7

from refloop.domain.referral import PatientId, Priority

Segment = hl7.Segment


def val(seg: Segment | None, field: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
    """One value, unescaped and stripped; "" when absent."""
    if seg is None:
        return ""
    try:
        return str(seg.extract_field(1, field, rep, comp, sub)).strip()
    except (IndexError, KeyError, TypeError):
        return ""


def reps(seg: Segment | None, field: int) -> int:
    """How many repetitions a field has (0 when absent)."""
    if seg is None or field >= len(seg):
        return 0
    return len(seg[field]) if str(seg[field]) else 0


def segments(msg: hl7.Message, seg_id: str) -> list[Segment]:
    return [s for s in msg if str(s[0]) == seg_id]


def first(msg: hl7.Message | list[Segment], seg_id: str) -> Segment | None:
    for s in msg:
        if str(s[0]) == seg_id:
            return s
    return None


# --- composite types ------------------------------------------------------------------------


def hd(seg: Segment | None, field: int) -> str:
    """An HD field (MSH-3, MSH-4) as one name: namespace ID, else universal ID."""
    return val(seg, field, 1) or val(seg, field, 2)


def entity_id(seg: Segment | None, field: int) -> tuple[str, str]:
    """An EI (e.g. an order number): (identifier, assigning system). The system is the
    namespace ID, else the universal ID."""
    return val(seg, field, 1), val(seg, field, 2) or val(seg, field, 3)


# Identifier types (table 0203) that are never a patient's record number here.
_NOT_A_RECORD = {"SS", "DL", "PPN", "SB", "SN", "NH", "NI", "BC", "DR", "EI", "AN", "VN"}
_RECORD = {"MR", "PI", "PT", "PN", "MRT"}


def patient_id(seg: Segment | None, field: int) -> PatientId | None:
    """The patient's identifier with its assigning authority, from a CX list (PID-3, MRG-1).

    Prefers a medical-record-type repetition; never picks social security or licence numbers."""
    best: PatientId | None = None
    for r in range(1, reps(seg, field) + 1):
        value = val(seg, field, 1, rep=r)
        if not value:
            continue
        kind = val(seg, field, 5, rep=r).upper()
        if kind in _NOT_A_RECORD:
            continue
        issuer = val(seg, field, 4, 1, rep=r) or val(seg, field, 4, 2, rep=r)
        pid = PatientId(value=value, issuer=issuer)
        if kind in _RECORD:
            return pid
        best = best or pid
    return best


def person(seg: Segment | None, field: int) -> str:
    """An XCN/XPN as a readable name: "DR Given Family (ID)"."""
    ident, family, given, middle = (val(seg, field, c) for c in (1, 2, 3, 4))
    prefix = val(seg, field, 6)
    name = " ".join(p for p in (prefix, given, middle, family) if p)
    return f"{name} ({ident})" if ident and name else (name or ident)


def coded(seg: Segment | None, field: int) -> tuple[str, str, str]:
    """A CE/CWE: (code, text, coding system)."""
    return val(seg, field, 1), val(seg, field, 2), val(seg, field, 3)


def place(seg: Segment | None, field: int) -> str:
    """A PL (location) as "point of care / room / bed / facility"."""
    parts = [val(seg, field, c) or val(seg, field, c, 1) for c in (1, 2, 3, 4)]
    return " / ".join(p for p in parts if p)


# --- time and priority ------------------------------------------------------------------------

_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


def parse_dtm(text: str) -> datetime | None:
    """HL7 DTM/TS (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]). No offset: taken as UTC."""
    m = _DTM.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, offset = m.groups()
    tz = timezone.utc
    if offset:
        sign = 1 if offset[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    try:
        return datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0),
            int((frac or "0").ljust(6, "0")[:6]), tzinfo=tz,
        )
    except ValueError:
        return None


def ts(seg: Segment | None, field: int, comp: int = 1) -> datetime | None:
    return parse_dtm(val(seg, field, comp))


# Table 0027 (TQ-6 / TQ1-9) -> our priorities; anything else is routine.
_PRIORITIES = {"S": Priority.STAT, "A": Priority.URGENT, "R": Priority.ROUTINE}


def priority(*codes: str) -> Priority:
    """The first priority code given that we know."""
    for code in codes:
        if code.strip().upper() in _PRIORITIES:
            return _PRIORITIES[code.strip().upper()]
    return Priority.ROUTINE
