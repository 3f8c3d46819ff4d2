"""A sample with new identifiers and times: its structure (segments, fields, JSON shape) kept.

HL7 changes are python-hl7 accessors ("ORC.F2", "PID.F3.R1.C1", "OBX2.F5") -> new value; the
message goes back in its own character set with CR separators. FHIR changes replace string
values exactly (ids, references, identifiers, dates), wherever they occur.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import hl7

from refloop.gateways.hl7.decode import decode_message, normalise_segments


class StructureChanged(ValueError):
    """A change would add fields or segments: the sample would no longer be the sample."""


def parse_hl7(data: bytes) -> hl7.Message:
    return hl7.parse(normalise_segments(decode_message(data).text))


def structure(data: bytes) -> list[tuple[str, int]]:
    """(segment ID, number of fields) per segment: what re-keying must leave as it was."""
    return [(str(seg[0]), len(seg)) for seg in parse_hl7(data)]


def rekey_hl7(data: bytes, changes: Mapping[str, str] | None = None, drop: tuple[str, ...] = (), strict: bool = True) -> bytes:
    """`data` with `changes` applied and the segments in `drop` removed. `strict`: refuse a
    change that would lengthen a segment (a field the sample does not have)."""
    decoded = decode_message(data)
    msg = hl7.parse(normalise_segments(decoded.text))
    before = [(str(s[0]), len(s)) for s in msg]
    for key, value in (changes or {}).items():
        msg[key] = value
    if strict and [(str(s[0]), len(s)) for s in msg] != before:
        raise StructureChanged(f"changes {sorted(changes or {})} would change the message's segments or fields")
    if drop:
        msg[:] = [s for s in msg if str(s[0]) not in drop]
    return str(msg).encode(decoded.charset)


def rekey_json(resource: Any, mapping: Mapping[str, str]) -> Any:
    """A copy with string values replaced exactly (ids, references, identifiers, dates); structure kept."""
    if isinstance(resource, dict):
        return {k: rekey_json(v, mapping) for k, v in resource.items()}
    if isinstance(resource, list):
        return [rekey_json(v, mapping) for v in resource]
    if isinstance(resource, str):
        return mapping.get(resource, resource)
    return copy.deepcopy(resource)


def hl7_time(at: datetime) -> str:
    """HL7 DTM in UTC with its offset, to the second."""
    return at.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def fhir_time(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
