"""ORU^R01 -> report_issued / report_revised / report_withdrawn, one per OBR.

OBR-25 (table 0123) and OBX-11 (table 0085) decide, strongest first:
  OBR-25 X                  -> report_withdrawn, cancelled
  any OBX-11 W              -> report_withdrawn, entered in error (posted for the wrong patient)
  OBR-25 C or any OBX-11 C  -> report_revised, corrected
  OBR-25 M                  -> report_revised, amended. M is "corrected, not final": the
                               content changed after a report went out, so the requester must
                               get it again; amended is the revision that says so without
                               claiming a signed-off correction.
  OBR-25 F                  -> report_issued, final
  OBR-25 P                  -> report_issued, preliminary
"""

from __future__ import annotations

import re

import hl7

from refloop.domain import events as ev
from refloop.gateways.hl7.errors import Hl7Error
from refloop.gateways.hl7.fields import Segment, first, segments, ts, val
from refloop.gateways.hl7.message import Header, Item, OrderRef, occurrence, order_groups, table_value

RESULT_STATUSES = {"P": "preliminary", "F": "final", "C": "corrected", "M": "corrected, not final", "X": "cancelled"}
CRITICAL_FLAGS = {"AA", "HH", "LL"}  # table 0078: very abnormal / panic limits
DICOM_STUDY = "113014"  # OBX-3 code (DCM) whose value is the Study Instance UID
_TEXT_TYPES = {"TX", "FT"}
_UID = re.compile(r"^[0-9.]+$")


def translate(msg: hl7.Message, header: Header) -> list[Item]:
    groups = [g for g in order_groups(msg) if first(g, "OBR") is not None]
    if not groups:
        raise Hl7Error(100, "ORU^R01 has no OBR segment: the message carries no report", "OBR")
    return [_report(msg, g, header, i, len(groups)) for i, g in enumerate(groups, 1)]


def _report(msg: hl7.Message, group: list[Segment], header: Header, i: int, total: int) -> Item:
    obr = first(group, "OBR")
    assert obr is not None
    seq = occurrence(msg, obr)
    status = table_value(msg, obr, 25, RESULT_STATUSES, "result status")
    obxs = segments(group, "OBX")
    ref = OrderRef.of(first(group, "ORC"), obr)
    study = next((val(o, 5) for o in obxs if val(o, 3) == DICOM_STUDY and val(o, 5)), "")
    keys = ref.keys(accession_number=val(obr, 18), study_instance_uid=study)
    if not keys.lookup() and not ref.placer:
        raise Hl7Error(
            101, "the report names no order: OBR-2 (placer), OBR-3 (filler order number), OBR-18 (accession) are empty", "OBR", seq, 3
        )
    common = dict(
        event_id=header.event_id(i, total),
        occurred_at=header.when(ts(obr, 22), ts(obr, 7)),  # OBR-22 status changed, OBR-7 observed
        source=header.source,
        report_id=ref.filler or keys.accession_number or ref.placer,
    )
    return Item(header.key(i, total), _event(status, {val(o, 11).upper() for o in obxs}, obxs, common), keys)


def _event(status: str, obx_status: set[str], obxs: list[Segment], common: dict) -> ev.EventBase:
    if status == "X":
        return ev.ReportWithdrawn(**common, reason="cancelled", note="report cancelled (OBR-25 X)")
    if "W" in obx_status:
        return ev.ReportWithdrawn(**common, reason="entered_in_error", note="result posted in error (OBX-11 W)")
    conclusion, critical = _conclusion(obxs), any(val(o, 8).upper() in CRITICAL_FLAGS for o in obxs)
    if status == "C" or "C" in obx_status:
        return ev.ReportRevised(**common, revision="corrected", conclusion=conclusion, critical=critical)
    if status == "M":
        return ev.ReportRevised(**common, revision="amended", conclusion=conclusion, critical=critical)
    return ev.ReportIssued(**common, status="final" if status == "F" else "preliminary", conclusion=conclusion, critical=critical)


def _conclusion(obxs: list[Segment], limit: int = 4000) -> str:
    """The report's text: TX/FT observations, else plain-text ST ones (not UIDs)."""
    texts = [val(o, 5) for o in obxs if val(o, 2) in _TEXT_TYPES]
    if not texts:
        texts = [v for o in obxs if val(o, 2) == "ST" and (v := val(o, 5)) and not _UID.match(v)]
    return "\n".join(t for t in texts if t)[:limit]
