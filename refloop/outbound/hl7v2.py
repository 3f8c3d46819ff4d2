"""HL7 v2.5.1 messages for a requester that takes HL7: ORU^R01 (result, retraction, no result)
and ORM^O01 with ORC-1 SC (order status along the way). Built and checked with python-hl7.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import hl7

from refloop.domain.loop import Loop, Outcome, Stage
from refloop.domain.referral import Referral
from refloop.outbound.fhir import discrepancies
from refloop.outbound.status import milestone_text, order_status

# Only for its separators and escape rules.
_ESCAPER = hl7.parse("MSH|^~\\&|")

# OBR-25 result status (table 0123) and OBX-11 observation status (table 0085).
_RESULT_STATUS = {"final": ("F", "F"), "amended": ("C", "C"), "corrected": ("C", "C"), "appended": ("C", "C")}


def _esc(value: object) -> str:
    return hl7.util.escape(_ESCAPER, str(value)) if value not in (None, "") else ""


def _field(*components: object) -> str:
    """One field from components, each escaped; trailing empty components dropped."""
    parts = [_esc(c) for c in components]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


def _segment(name: str, fields: dict[int, str]) -> str:
    last = max(fields) if fields else 0
    return "|".join([name] + [fields.get(i, "") for i in range(1, last + 1)])


def _ts(at: datetime | None) -> str:
    if at is None:
        return ""
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def control_id(*parts: object) -> str:
    """A stable MSH-10 for one logical message: a resend carries the same control ID."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:20].upper()


def _msh(ref: Referral, message_type: tuple[str, str, str], control: str, sender: str, now: datetime) -> str:
    return "MSH|^~\\&|" + "|".join(
        [
            "REFLOOP",
            _field(sender),
            _field(ref.requester.organization or "REQUESTER"),
            _field(ref.requester.practitioner),
            _ts(now),
            "",
            "^".join(message_type),
            control,
            "P",
            "2.5.1",
            "",
            "",
            "AL",  # MSH-15 accept ack: always
            "NE",  # MSH-16 application ack: never (the ACK is the application's answer)
            "",
            "UNICODE UTF-8",
        ]
    )


def _pid(ref: Referral) -> str:
    pid = ref.patient.id if ref.patient else None
    # PID-3 CX: ID ^^^ assigning authority; the ID is meaningless without it.
    return _segment("PID", {1: "1", 3: _field(pid.value, "", "", pid.issuer) if pid else ""})


def _orc(ref: Referral, control: str, status: str, at: datetime | None, reason: str = "") -> str:
    return _segment(
        "ORC",
        {
            1: control,
            2: _field(ref.placer_order_number or ref.referral_id, ref.identifiers.placer_system),
            3: _field(ref.identifiers.filler_order_number),
            5: status,
            9: _ts(at),
            16: _field("", reason) if reason else "",
        },
    )


def _obr(ref: Referral, extra: dict[int, str]) -> str:
    s = ref.service
    fields = {
        1: "1",
        2: _field(ref.placer_order_number or ref.referral_id, ref.identifiers.placer_system),
        3: _field(ref.identifiers.filler_order_number),
        4: _field(s.procedure_code, s.procedure_display, s.procedure_system) or _field("", s.modality or "imaging"),
        18: _field(ref.identifiers.accession_number),
        24: "RAD",
    }
    fields.update(extra)
    return _segment("OBR", fields)


def _ntes(texts: list[str]) -> list[str]:
    return [_segment("NTE", {1: str(i), 3: _esc(t)}) for i, t in enumerate(texts, start=1)]


def oru_r01(loop: Loop, what: str, version: int, sender: str, now: datetime) -> str:
    """The result (or its retraction, or why there is none) as ORU^R01."""
    ref = loop.referral
    report = loop.report
    control = control_id(ref.referral_id, "result", what, version)
    code = _field(ref.service.procedure_code, ref.service.procedure_display, ref.service.procedure_system) or _field("", "report")
    notes: list[str] = []
    obx: list[str] = []
    if what == "result":
        obr25, obx11 = _RESULT_STATUS.get(report.status, ("F", "F"))
        orc5 = "CM"
        flag = "AA" if report.critical else ""  # OBX-8 table 0078: AA = critical / very abnormal
        if report.critical:
            notes.append("CRITICAL RESULT: acknowledge promptly.")
        obx.append(_segment("OBX", {1: "1", 2: "TX", 3: code, 4: "1", 5: _esc(report.conclusion), 8: flag, 11: obx11, 14: _ts(report.issued_at)}))
        when = report.issued_at
    elif what == "retraction":
        wrong = loop.stage == Stage.ENTERED_IN_ERROR
        obr25, orc5 = "C", "CM"
        # OBX-11 W: posted in error (e.g. wrong patient); D: delete, a new result follows.
        text = f"Report withdrawn: {loop.outcome_reason or 'entered in error'}" if wrong else "Report withdrawn; a new report will follow"
        obx.append(_segment("OBX", {1: "1", 2: "TX", 3: code, 4: "1", 5: _esc(text), 11: "W" if wrong else "D"}))
        notes.append(text + ". Do not use the earlier report.")
        when = loop.stage_since
    else:
        # OBR-25 X: no results available, order cancelled; the reason in ORC-16 and NTE.
        obr25 = "X"
        orc5 = order_status(loop.stage).orc5 if loop.stage in (Stage.NOT_PERFORMED, Stage.CANCELLED, Stage.DID_NOT_ATTEND) else "CA"
        outcome = (loop.outcome or Outcome.CLOSED_BY_OPERATOR).value.replace("_", " ")
        notes.append(f"No result: {outcome}. Reason: {loop.outcome_reason or outcome}")
        if loop.surviving_referral:
            notes.append(f"The order continues as {loop.surviving_referral}.")
        when = loop.stage_since
    uid = ref.identifiers.study_instance_uid
    if uid and what != "exception":
        obx.append(_segment("OBX", {1: str(len(obx) + 1), 2: "ST", 3: _field("113014", "DICOM Study", "DCM"), 5: _esc(uid), 11: "F"}))
    notes += [f"Discrepancy: {d}" for d in discrepancies(loop)]
    reason = loop.outcome_reason if what == "exception" else ""
    segments = [
        _msh(ref, ("ORU", "R01", "ORU_R01"), control, sender, now),
        _pid(ref),
        _orc(ref, "RE", orc5, when, reason),
        _obr(ref, {7: _ts(loop.milestones.get(Stage.ACQUIRED.value)), 22: _ts(when), 25: obr25}),
        *obx,
        *_ntes(notes),
    ]
    return _checked("\r".join(segments))


def order_status_message(ref: Referral, milestone: dict, seq: int, sender: str, now: datetime) -> str:
    """A milestone as ORM^O01 with ORC-1 SC and the ORC-5 that matches the loop's stage."""
    name, detail = milestone["milestone"], milestone.get("detail", "")
    status = order_status(milestone["stage"]).orc5
    at = datetime.fromisoformat(milestone["at"]) if milestone.get("at") else now
    reason = detail if name in ("cancelled", "did_not_attend", "not_performed") else ""
    obr_extra: dict[int, str] = {}
    if name == "booked" and detail:
        try:
            obr_extra[36] = _ts(datetime.fromisoformat(detail))  # OBR-36 scheduled date/time
        except ValueError:
            pass
    segments = [
        _msh(ref, ("ORM", "O01", "ORM_O01"), control_id(ref.referral_id, "status", seq), sender, now),
        _pid(ref),
        _orc(ref, "SC", status, at, reason),
        _obr(ref, obr_extra),
        *_ntes([milestone_text(name, detail)]),
    ]
    return _checked("\r".join(segments))


def _checked(text: str) -> str:
    """Parse what we built: a message python-hl7 cannot read is a bug here, not the receiver's."""
    msg = hl7.parse(text)
    if not str(msg.segment("MSH")(10)) or len(msg) < 3:
        raise ValueError(f"built an incomplete HL7 message: {text[:80]!r}")
    return text + "\r"
