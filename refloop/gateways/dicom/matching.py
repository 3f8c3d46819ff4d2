"""C-FIND key matching for the Modality Worklist (PS3.4 C.2.2.2 and Annex K) on pydicom datasets.

    matches(query, item) -> bool      does this worklist item answer the query?
    answer(query, item)  -> Dataset   exactly the requested keys, with the item's values

Supported: universal matching (empty value or "*"), single value matching, wildcards
`*`/`?` on string VRs (person names case-insensitively), list of UID matching, date and
time ranges (SPS start date and time combined into one date-time range when both are
given), any-of-several values (an item with several station AE titles; a query listing
several), sequence matching, and SPS keys sent flat at the top level by some modalities.
"""

from __future__ import annotations

import copy
import re

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
SPS = Tag(tag_for_keyword("ScheduledProcedureStepSequence"))
SPS_DATE = Tag(tag_for_keyword("ScheduledProcedureStepStartDate"))
SPS_TIME = Tag(tag_for_keyword("ScheduledProcedureStepStartTime"))
# Attributes that live in the SPS item; a key for one of them sent flat is matched there.
SPS_ATTRIBUTES = frozenset(
    Tag(tag_for_keyword(k))
    for k in (
        "Modality",
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
        "ScheduledPerformingPhysicianName",
        "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepID",
        "ScheduledStationName",
        "ScheduledProcedureStepLocation",
        "ScheduledProcedureStepStatus",
        "PreMedication",
        "RequestedContrastAgent",
    )
)
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})


class QueryError(ValueError):
    """A key value the SCP cannot interpret (answered with a failure status and comment)."""


def _skip(tag: BaseTag) -> bool:
    return tag == SPECIFIC_CHARACTER_SET or tag.element == 0


def _values(value: object) -> list[str]:
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [s for s in (str(v).strip() for v in items) if s]


def _top_lookup(item: Dataset, tag: BaseTag) -> DataElement | None:
    if tag in item:
        return item[tag]
    if tag in SPS_ATTRIBUTES and item.get(SPS) is not None and item[SPS].value:
        sps = item[SPS].value[0]
        return sps[tag] if tag in sps else None
    return None


def _item_lookup(item: Dataset, tag: BaseTag) -> DataElement | None:
    return item[tag] if tag in item else None


# --- dates and times -------------------------------------------------------------------------


def _norm_date(value: str) -> str:
    value = value.replace(".", "")  # ACR-NEMA style YYYY.MM.DD
    if len(value) != 8 or not value.isdigit():
        raise QueryError(f"invalid DA value {value!r}")
    return value


def _norm_time(value: str, upper: bool = False) -> str:
    """HHMMSS.FFFFFF; a partial upper bound covers its whole hour, minute or second."""
    whole, _, fraction = value.replace(":", "").partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and (not fraction.isdigit() or len(whole) != 6)):
        raise QueryError(f"invalid TM value {value!r}")
    whole += ("5959" if upper else "0000")[len(whole) - 2 :]
    fraction = (fraction + ("999999" if upper else "000000"))[:6]
    return f"{whole}.{fraction}"


def _norm_time_upper(value: str) -> str:
    return _norm_time(value, upper=True)


def _bounds(value: str, low_norm, high_norm) -> tuple[str | None, str | None]:
    """(low, high) of a single value or a range; None is an open end."""
    if "-" not in value:
        return low_norm(value), high_norm(value)
    low, high = value.split("-", 1)
    if not low and not high:
        raise QueryError(f"empty range {value!r}")
    return (low_norm(low) if low else None), (high_norm(high) if high else None)


def _item_time(value: str) -> str | None:
    try:
        return _norm_time(value)
    except QueryError:
        return None


def _item_date(value: str) -> str | None:
    try:
        return _norm_date(value)
    except QueryError:
        return None


def _in_range(value: str | None, lo: str | None, hi: str | None) -> bool:
    return value is not None and (lo is None or value >= lo) and (hi is None or value <= hi)


def _match_date_time(q_date: str, q_time: str, i_date: DataElement | None, i_time: DataElement | None) -> bool:
    """SPS start date and time given together: one combined date-time range (PS3.4 C.2.2.2.5)."""
    d_lo, d_hi = _bounds(q_date, _norm_date, _norm_date)
    t_lo, t_hi = _bounds(q_time, _norm_time, _norm_time_upper)
    day = _item_date((_values(i_date.value) or [""])[0]) if i_date is not None else None
    at = _item_time((_values(i_time.value) or [""])[0]) if i_time is not None else None
    if day is None or at is None:
        return False
    lo = None if d_lo is None else d_lo + (t_lo or "000000.000000")
    hi = None if d_hi is None else d_hi + (t_hi or "235959.999999")
    return _in_range(day + at, lo, hi)


# --- single elements -------------------------------------------------------------------------


def _wildcard(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _match_one(vr: str, q: str, v: str) -> bool:
    if vr == "PN":
        q, v = q.casefold(), v.casefold()  # PS3.4 C.2.2.2.1: PN may match case-insensitively
    if vr in WILDCARD_VRS and ("*" in q or "?" in q):
        return _wildcard(q, v)
    if vr == "DA":
        lo, hi = _bounds(q, _norm_date, _norm_date)
        return _in_range(_item_date(v), lo, hi)
    if vr == "TM":
        lo, hi = _bounds(q, _norm_time, _norm_time_upper)
        return _in_range(_item_time(v), lo, hi)
    return q == v


def _match_element(q: DataElement, target: DataElement | None) -> bool:
    wanted = _values(q.value)
    if not wanted or wanted == ["*"]:
        return True  # universal matching
    have = _values(target.value) if target is not None else []
    vr = target.VR if target is not None and q.VR in ("UN", None) else q.VR
    # Several values on either side: any pair matching is a match (list of UID matching is the
    # standard case; station AE titles are the everyday one).
    return any(_match_one(vr, w, h) for w in wanted for h in have)


# --- datasets and sequences ------------------------------------------------------------------


def _date_time_pair(query: Dataset) -> tuple[str, str] | None:
    if SPS_DATE in query and SPS_TIME in query:
        d, t = _values(query[SPS_DATE].value), _values(query[SPS_TIME].value)
        if d and t:
            return d[0], t[0]
    return None


def _match_level(query: Dataset, item: Dataset, lookup) -> bool:
    pair = _date_time_pair(query)
    if pair and not _match_date_time(pair[0], pair[1], lookup(item, SPS_DATE), lookup(item, SPS_TIME)):
        return False
    for elem in query:
        tag = elem.tag
        if _skip(tag) or (pair and tag in (SPS_DATE, SPS_TIME)):
            continue
        target = lookup(item, tag)
        if elem.VR == "SQ":
            if not _match_sequence(elem, target):
                return False
        elif not _match_element(elem, target):
            return False
    return True


def _sequence_key(elem: DataElement) -> Dataset | None:
    """The query item of a sequence key, or None for universal sequence matching."""
    items = list(elem.value or [])
    if not items or not any(not _skip(e.tag) for e in items[0]):
        return None
    return items[0]


def _is_universal(query: Dataset) -> bool:
    return all(
        _skip(e.tag) or (_sequence_key(e) is None if e.VR == "SQ" else _values(e.value) in ([], ["*"]))
        for e in query
    )


def _match_sequence(q: DataElement, target: DataElement | None) -> bool:
    key = _sequence_key(q)
    if key is None:
        return True
    items = list(target.value) if target is not None and target.value else []
    if not items:
        return _is_universal(key)  # only return keys asked: an absent sequence still matches
    return any(_match_level(key, it, _item_lookup) for it in items)


def matches(query: Dataset, item: Dataset) -> bool:
    """Raises QueryError for a key value that is not valid for its VR."""
    return _match_level(query, item, _top_lookup)


def _answer_level(query: Dataset, item: Dataset, lookup) -> Dataset:
    out = Dataset()
    for elem in query:
        if _skip(elem.tag):
            continue
        target = lookup(item, elem.tag)
        vr = target.VR if target is not None else elem.VR
        if elem.VR == "SQ" or vr == "SQ":
            items = list(target.value) if target is not None and target.value else []
            key = _sequence_key(elem) if elem.VR == "SQ" else None
            if key is not None:
                items = [_answer_level(key, it, _item_lookup) for it in items if _match_level(key, it, _item_lookup)]
            else:
                items = [copy.copy(it) for it in items]  # whole items: never hand out the entity's own
            out.add(DataElement(elem.tag, "SQ", Sequence(items)))
            continue
        value = target.value if target is not None else None
        out.add(DataElement(elem.tag, vr if vr != "UN" else elem.VR, value if _values(value) else None))
    return out


def answer(query: Dataset, item: Dataset) -> Dataset:
    """The response identifier: every key of the query (at the level it was asked), no more."""
    return _answer_level(query, item, _top_lookup)
