"""Real-world HL7 situations through a real MLLP listener, intake, worker and Temporal server.

Messages are the public samples re-keyed (order numbers, accession, patient), not invented shapes.
"""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig

from refloop.domain.loop import Outcome, Stage
from refloop.domain.referral import PatientId
from refloop.gateways.hl7.receiver import Hl7Receiver
from refloop.gateways.hl7.server import MllpServer
from refloop.gateways.intake import Intake
from refloop.store.repo import patient_key
from tests.conftest import unique
from tests.hl7kit import Mllp, ack_code, err_text, send, stack, variant  # noqa: F401 (fixture)

OMI = "dcm4che/OMI_O23-ImagingOrder.hl7"
ORU = "dcm4che/ORU_R01-SR.hl7"
SIU = "microsoft-fhir-converter/SIU-S12-01.hl7"
A04 = "microsoft-fhir-converter/ADT-A04-01.hl7"
A40 = "dcm4che/ADT_A40-PatientMerge.hl7"


def uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def order(po: str, pid: str = "PID_1^^^ADT1", *, study: str = "", control: str = "", **changes: str) -> bytes:
    """The dcm4che OMI^O23 sample for order `po`: accession ACC-po, filler F-po, own study UID."""
    return variant(
        OMI,
        {
            "MSH.F10": control or f"O-{po}",
            "PID.F3": pid,
            "ORC.F2": po,
            "ORC.F3": f"F-{po}",
            "OBR.F2": po,
            "OBR.F3": f"F-{po}",
            "IPC.F1": f"ACC-{po}",
            "IPC.F2": f"RP-{po}",
            "IPC.F3": study or uid(),
            "IPC.F4": f"SPS-{po}",
            **changes,
        },
    )


def report(po: str, status: str = "F", *, control: str, placer: bool = True, **changes: str) -> bytes:
    """The dcm4che ORU^R01 (SR) sample reporting on order `po` (found by filler and accession)."""
    return variant(
        ORU,
        {
            "MSH.F10": control,
            "OBR.F2": po if placer else "",
            "OBR.F3": f"F-{po}",
            "OBR.F18": f"ACC-{po}",
            "OBR.F25": status,
            "OBX.F5": changes.pop("study", uid()),  # OBX 1 is the 113014 DICOM Study
            **changes,
        },
    )


def booking(po: str, trigger: str = "S12", pid: str = "PID_1^^^ADT1", start: str = "20301201093000+0100") -> bytes:
    """The Microsoft SIU sample with the order number it lacks (SCH-26/27)."""
    return variant(
        SIU,
        {"MSH.F9": f"SIU^{trigger}^SIU_{trigger}", "MSH.F10": f"{trigger}-{po}", "SCH.F26": po, "SCH.F27": f"F-{po}", "TQ1.F7": start, "PID.F3": pid},
    )


def arrival(pid: str, control: str) -> bytes:
    return variant(A04, {"MSH.F10": control, "PID.F3": pid})


async def ordered(stack, po: str, pid: str = "PID_1^^^ADT1") -> None:
    """Place the order and wait until the read model has it (arrivals match on the read model)."""
    assert ack_code(await send(stack.port, order(po, pid))) == "AA"
    assert await stack.persisted(lambda s: (lp := s.get_loop(po)) is not None and lp.stage == Stage.ORDERED)


# --- correlation ------------------------------------------------------------------------------


async def test_report_before_its_order_is_parked_then_released_when_the_order_arrives(stack):
    po, study = unique(), uid()
    # The reporting system names filler order number, accession and study, not the placer number.
    ack = await send(stack.port, report(po, "F", control=f"R-{po}", placer=False, study=study))
    assert ack_code(ack) == "AA" and "kept until its referral is known" in str(ack.segment("MSA")[3])
    (parked,) = stack.rows()
    assert parked.status == "parked" and stack.store.loops() == []
    assert ack_code(await send(stack.port, order(po, study=study))) == "AA"
    loop = await stack.loop(po, lambda lp: lp.stage == Stage.REPORTED_FINAL)
    assert loop.stage == Stage.REPORTED_FINAL and loop.report.version == 1
    assert await stack.persisted(lambda _: stack.rows()[0].status == "released")


async def test_the_same_report_three_times_is_one_transition_and_three_aa(stack):
    po = unique()
    await ordered(stack, po)
    message = report(po, "F", control=f"R-{po}")
    acks = [await send(stack.port, message) for _ in range(3)]  # a sender retrying after ACK timeouts
    assert [ack_code(a) for a in acks] == ["AA", "AA", "AA"]
    assert all(str(a.segment("MSA")[2]) == f"R-{po}" for a in acks)
    assert "(resend)" in str(acks[2].segment("MSA")[3])
    loop = await stack.loop(po, lambda lp: lp.stage == Stage.REPORTED_FINAL)
    assert [t.kind for t in loop.timeline].count("report_issued") == 1 and loop.report.version == 1
    assert [r.message_key for r in stack.rows()].count(f"R-{po}") == 1


async def test_a_preliminary_after_the_final_keeps_the_final(stack):
    po = unique()
    await ordered(stack, po)
    assert ack_code(await send(stack.port, report(po, "F", control=f"R1-{po}"))) == "AA"
    assert ack_code(await send(stack.port, report(po, "P", control=f"R2-{po}"))) == "AA"
    loop = await stack.loop(po, lambda lp: len(lp.timeline) >= 3)
    assert loop.stage == Stage.REPORTED_FINAL and (loop.report.status, loop.report.version) == ("final", 1)
    late = next(t for t in loop.timeline if t.event_id.endswith(f"R2-{po}"))
    assert not late.applied and "preliminary after final" in late.note


async def test_same_patient_id_under_another_issuer_does_not_bind_the_arrival(stack):
    po, pat = unique(), unique("MRN")
    await ordered(stack, po, f"{pat}^^^HOSP_A^MR")
    ack = await send(stack.port, arrival(f"{pat}^^^HOSP_B^MR", f"A1-{po}"))
    assert ack_code(ack) == "AA" and stack.rows()[-1].status == "parked"
    assert (await stack.loop(po)).stage == Stage.ORDERED
    assert ack_code(await send(stack.port, arrival(f"{pat}^^^HOSP_A^MR", f"A2-{po}"))) == "AA"
    loop = await stack.loop(po, lambda lp: lp.stage == Stage.ARRIVED)
    assert loop.stage == Stage.ARRIVED and loop.referral.patient.id == PatientId(value=pat, issuer="HOSP_A")


async def test_after_a_merge_an_arrival_under_the_new_id_still_matches(stack):
    po, old, new = unique(), unique("OLD"), unique("NEW")
    await ordered(stack, po, f"{old}^^^ADT1")
    merge = variant(A40, {"MSH.F10": f"M-{po}", "PID.F3": f"{new}^^^ADT1", "MRG.F1": f"{old}^^^ADT1"})
    assert ack_code(await send(stack.port, merge)) == "AA"
    # The loop re-points its patient; the index follows once the loop has persisted.
    assert await stack.persisted(lambda s: s.find_referrals("patient", patient_key(PatientId(value=new, issuer="ADT1"))) == [po])
    assert ack_code(await send(stack.port, arrival(f"{new}^^^ADT1", f"A-{po}"))) == "AA"
    loop = await stack.loop(po, lambda lp: lp.stage == Stage.ARRIVED)
    assert loop.stage == Stage.ARRIVED and loop.referral.patient.id.value == new


async def test_a_merge_repoints_every_open_loop_of_the_patient_and_only_those(stack):
    po1, po2, other = unique(), unique(), unique()
    old, new = unique("OLD"), unique("NEW")
    for po in (po1, po2):
        await ordered(stack, po, f"{old}^^^ADT1")
    await ordered(stack, other, f"{old}^^^OTHER_ISSUER")
    merge = variant(A40, {"MSH.F10": f"M-{po1}", "PID.F3": f"{new}^^^ADT1", "MRG.F1": f"{old}^^^ADT1"})
    assert ack_code(await send(stack.port, merge)) == "AA"
    assert stack.rows()[-1].referral_id == ",".join(sorted([po1, po2]))
    for po in (po1, po2):
        loop = await stack.loop(po, lambda lp: lp.referral.patient.id.value == new)
        assert loop.referral.patient.id == PatientId(value=new, issuer="ADT1")
    assert (await stack.loop(other)).referral.patient.id.value == old
    # Both loops now await the new ID's arrival: an arrival is flagged, never guessed.
    assert await stack.persisted(lambda s: len(s.find_referrals("patient", patient_key(PatientId(value=new, issuer="ADT1")))) == 2)
    assert ack_code(await send(stack.port, arrival(f"{new}^^^ADT1", f"A-{po1}"))) == "AA"
    assert stack.rows()[-1].status == "ambiguous"


# --- the loop driven by HL7 alone -----------------------------------------------------------


async def test_order_booking_arrival_and_reports_move_the_loop(stack):
    po = unique()
    await ordered(stack, po)
    assert ack_code(await send(stack.port, booking(po))) == "AA"
    loop = await stack.loop(po, lambda lp: lp.stage == Stage.SCHEDULED)
    assert loop.stage == Stage.SCHEDULED and loop.referral.appointment.start.isoformat() == "2030-12-01T09:30:00+01:00"
    assert loop.referral.identifiers.filler_order_number == f"F-{po}"
    assert ack_code(await send(stack.port, booking(po, "S13", start="20301202100000+0100"))) == "AA"
    loop = await stack.loop(po, lambda lp: lp.referral.appointment.start.day == 2)
    assert loop.referral.appointment.start.isoformat() == "2030-12-02T10:00:00+01:00"
    assert await stack.persisted(lambda s: s.get_loop(po).referral.appointment.start.day == 2)
    assert ack_code(await send(stack.port, arrival("PID_1^^^ADT1", f"A-{po}"))) == "AA"
    assert (await stack.loop(po, lambda lp: lp.stage == Stage.ARRIVED)).stage == Stage.ARRIVED
    assert ack_code(await send(stack.port, report(po, "P", control=f"R1-{po}"))) == "AA"
    assert (await stack.loop(po, lambda lp: lp.stage == Stage.REPORTED_PRELIMINARY)).stage == Stage.REPORTED_PRELIMINARY
    assert ack_code(await send(stack.port, report(po, "F", control=f"R2-{po}"))) == "AA"
    assert (await stack.loop(po, lambda lp: lp.stage == Stage.REPORTED_FINAL)).report.version == 1
    assert ack_code(await send(stack.port, report(po, "C", control=f"R3-{po}"))) == "AA"
    loop = await stack.loop(po, lambda lp: lp.report.version == 2)
    assert (loop.report.status, loop.report.version, loop.stage) == ("corrected", 2, Stage.REPORTED_FINAL)


def _cancel(po):
    return order(po, control=f"X-{po}", **{"ORC.F1": "CA", "ORC.F16": "DUP^Duplicate order^L"})


def _discontinue(po):
    return order(po, control=f"X-{po}", **{"ORC.F1": "DC", "ORC.F16": "110503^Patient allergic to media/contrast^DCM"})


def _change(po):
    return order(po, control=f"X-{po}", **{"ORC.F1": "XO", "OBR.F4": "24725-4^CT Head^LN"})


@pytest.mark.parametrize(
    "name, follow_up, check",
    [
        ("CA duplicate", lambda po: [_cancel(po)], lambda lp: lp.stage == Stage.CANCELLED and lp.outcome == Outcome.DUPLICATE),
        ("DC", lambda po: [_discontinue(po)], lambda lp: lp.stage == Stage.NOT_PERFORMED and "allergic" in lp.outcome_reason),
        ("XO", lambda po: [_change(po)], lambda lp: lp.referral.service.procedure_code == "24725-4"),
        ("S15", lambda po: [booking(po), booking(po, "S15")], lambda lp: lp.stage == Stage.CANCELLED and lp.outcome == Outcome.CANCELLED),
        ("S26", lambda po: [booking(po), booking(po, "S26")], lambda lp: lp.stage == Stage.DID_NOT_ATTEND),
        ("OBR-25 M", lambda po: [report(po, "F", control=f"R1-{po}"), report(po, "M", control=f"R2-{po}")],
         lambda lp: (lp.report.status, lp.report.version) == ("amended", 2)),
        ("OBR-25 X", lambda po: [report(po, "F", control=f"R1-{po}"), report(po, "X", control=f"R2-{po}")],
         lambda lp: lp.report.status == "withdrawn" and lp.stage == Stage.ARCHIVED),
        ("OBX-11 W", lambda po: [report(po, "F", control=f"R1-{po}"), report(po, "F", control=f"R2-{po}", **{"OBX2.F11": "W"})],
         lambda lp: lp.stage == Stage.ENTERED_IN_ERROR and lp.outcome == Outcome.ENTERED_IN_ERROR),
        ("OBX-11 C", lambda po: [report(po, "F", control=f"R1-{po}"), report(po, "F", control=f"R2-{po}", **{"OBX2.F11": "C"})],
         lambda lp: (lp.report.status, lp.report.version) == ("corrected", 2)),
    ],
)
async def test_exceptions_and_revisions_arrive_as_hl7(stack, name, follow_up, check):
    po = unique()
    await ordered(stack, po)
    for message in follow_up(po):
        assert ack_code(await send(stack.port, message)) == "AA", name
    loop = await stack.loop(po, check)
    assert check(loop), f"{name}: {loop.stage} {loop.outcome} {loop.report}"


# --- robustness ------------------------------------------------------------------------------


async def test_bad_input_is_answered_and_the_connection_and_listener_keep_serving(stack):
    good = iter(unique() for _ in range(20))
    conn = await Mllp.open(stack.port)
    po = next(good)
    bad = [
        (b"MSH|^~\\&|SENDER|FAC", "MSH^1^9", "message type (MSH-9) is empty"),  # truncated in the header
        (b"\r".join(order(po).split(b"\r")[:3]), "ORC", "has no ORC segment"),  # truncated after PID
        (order(po).split(b"\r", 1)[1], "MSH", "must begin with an MSH segment"),  # MSH-less
        (order(po).replace(b"\r", b"\\r"), "ORC", "segment separators missing"),  # separators written as text
        (b"\x00\x01\x02 not hl7 \xff", "MSH", "must begin with an MSH segment"),  # noise in a frame
    ]
    for data, segment, reason in bad:
        ack = await conn.send(data)
        assert ack_code(ack) == "AR" and reason in err_text(ack)
        assert str(ack.segment("ERR")[2]).startswith(segment)
        po = next(good)
        assert ack_code(await conn.send(order(po))) == "AA"  # same connection, next message fine
    # LF-only and CRLF segment separators are read, not rejected.
    for sep in (b"\n", b"\r\n"):
        po = next(good)
        assert ack_code(await conn.send(order(po).replace(b"\r", sep))) == "AA"
        assert (await stack.loop(po, lambda lp: lp.stage == Stage.ORDERED)).stage == Stage.ORDERED
    # Garbage between frames is skipped; the frame after it is answered.
    po = next(good)
    ack = await conn.send(order(po), prefix=b"\x00\xffgarbage between frames\r\n")
    assert ack_code(ack) == "AA" and str(ack.segment("MSA")[2]) == f"O-{po}"
    # A frame that lost its end block, then a whole one: one ACK, for the whole one.
    po = next(good)
    ack = await conn.send(order(po), prefix=b"\x0bMSH|^~\\&|HALF|SENT")
    assert ack_code(ack) == "AA" and str(ack.segment("MSA")[2]) == f"O-{po}"
    await conn.close()
    # A sender that hangs up mid-frame ends only its own connection.
    _, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(b"\x0bMSH|^~\\&|CUT|OFF|")
    await writer.drain()
    writer.close()
    po = next(good)
    assert ack_code(await send(stack.port, order(po))) == "AA"
    # Every bad message is kept with its reason.
    rejected = [r for r in stack.rows() if r.status == "rejected"]
    assert len(rejected) == len(bad) and all(r.error for r in rejected)


async def test_an_oversized_frame_ends_only_its_connection(stack):
    small = MllpServer(Hl7Receiver(Intake(stack.client, stack.store, "tq-small")), max_frame=4096)
    port = await small.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x0b" + b"X" * 20000)  # no end block in sight
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the listener
        writer.close()
        ack = await send(port, variant("dcm4che/ADT_A31-UpdatePersonInfo.hl7"))
        assert ack_code(ack) == "AR"  # the listener still answers
    finally:
        await small.stop()


async def test_a_rejected_message_sent_again_is_kept_once_and_rejected_again(stack):
    bad = variant(OMI, {"MSH.F10": f"B-{unique()}", "ORC.F1": "ZZ"})
    acks = [await send(stack.port, bad) for _ in range(2)]
    assert [ack_code(a) for a in acks] == ["AR", "AR"] and all("'ZZ' is not supported" in err_text(a) for a in acks)
    (row,) = stack.rows()
    assert row.status == "rejected" and "ORC-1" in row.error


async def test_many_concurrent_connections(stack):
    pos = [unique() for _ in range(20)]
    acks = await asyncio.gather(*(send(stack.port, order(po)) for po in pos))
    assert [ack_code(a) for a in acks] == ["AA"] * len(pos)
    assert sorted(str(a.segment("MSA")[2]) for a in acks) == sorted(f"O-{po}" for po in pos)
    for po in pos:
        assert (await stack.loop(po, lambda lp: lp.stage == Stage.ORDERED)).stage == Stage.ORDERED


async def test_concurrent_resends_of_one_message_make_one_transition(stack):
    po = unique()
    acks = await asyncio.gather(*(send(stack.port, order(po)) for _ in range(5)))
    assert [ack_code(a) for a in acks] == ["AA"] * 5
    assert [r.message_key for r in stack.rows()] == [f"O-{po}"]  # one inbox row
    # Resends racing the first attempt may each signal; the loop applies the event once and
    # records the others as duplicates of its event_id.
    loop = await stack.loop(po, lambda lp: lp.stage == Stage.ORDERED)
    placed = [t for t in loop.timeline if t.kind == "order_placed"]
    assert sum(t.applied for t in placed) == 1
    assert all("duplicate event_id" in t.note for t in placed if not t.applied)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_temporal_unreachable_is_answered_ae_and_the_resend_is_taken(stack):
    po = unique()
    dead = await Client.connect(
        f"127.0.0.1:{_free_port()}",
        data_converter=pydantic_data_converter,
        lazy=True,
        retry_config=RetryConfig(max_retries=1, max_elapsed_time_millis=500),
    )
    cut_off = MllpServer(Hl7Receiver(Intake(dead, stack.store, "tq-unreachable")))
    port = await cut_off.start("127.0.0.1", 0)
    try:
        ack = await send(port, order(po))
        assert ack_code(ack) == "AE" and str(ack.segment("MSA")[2]) == f"O-{po}"
        assert str(ack.segment("ERR")[3]).startswith("207") and "please resend" in err_text(ack)
        assert ack_code(await send(port, order(po))) == "AE"  # still down: still AE, never AA
    finally:
        await cut_off.stop()
    (row,) = stack.rows()
    assert row.status == "failed"
    # The sender resends once Temporal is back: the same inbox row, now accepted.
    assert ack_code(await send(stack.port, order(po))) == "AA"
    assert (await stack.loop(po, lambda lp: lp.stage == Stage.ORDERED)).stage == Stage.ORDERED
    (row,) = stack.rows()
    assert row.status == "accepted" and row.referral_id == po
