"""The day's script: which referrals come in, the path each takes through the department's
systems, and how each loop should end. Times are today's, compressed: appointments later in
the day, except the patient who never comes (booked for now; the no-show timer decides).

Every message goes through a real protocol: orders, bookings, arrivals and reports as HL7 v2
over MLLP; the modality's worklist query and procedure steps as DICOM; the archive's study
and the FHIR-speaking systems over HTTP; results out to the requester's EHR, which acknowledges.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

from refloop.demo.messages import A04, A10, ORU_CDA, ORU_SR, Ids
from refloop.demo.replay import Intended, Referral, Replay, Story
from refloop.domain.loop import Outcome, Stage
from refloop.domain.policy import load_policy

# The day's policy: the defaults, with the deadlines the day must see pass made short.
POLICY = Path(__file__).with_name("policy.toml")
COMPLETED = Intended(Stage.CLOSED, Outcome.COMPLETED)


# --- building blocks: what every loop goes through ------------------------------------------


async def ordered(r: Replay, ref: Referral) -> None:
    if ref.placer == "orm":
        await r.hl7(ref, f"ORM^O01 new order ({ref.modality}, priority {ref.priority})", r.msgs.orm(ref.ids, priority=ref.priority, modality=ref.modality))
    else:
        await r.hl7(ref, f"OMI^O23 new order ({ref.modality}, priority {ref.priority})", r.msgs.omi(ref.ids, priority=ref.priority, modality=ref.modality))
    await r.at(ref, Stage.ORDERED)


async def booked(r: Replay, ref: Referral) -> None:
    await r.hl7(ref, f"SIU^S12 booked for {ref.ids.appointment:%H:%M} UTC", r.msgs.booking(ref.ids))
    await r.at(ref, Stage.SCHEDULED)


async def arrived(r: Replay, ref: Referral) -> None:
    # Each registry's ADT sample carries its own assigning authority: the one the order used.
    sample = A04 if ref.placer == "orm" else A10
    await r.hl7(ref, f"{'ADT^A04' if sample == A04 else 'ADT^A10'} patient arrived", r.msgs.arrival(ref.ids, sample))
    await r.at(ref, Stage.ARRIVED)


async def started(r: Replay, ref: Referral) -> str:
    """The modality finds its worklist item (by its AE title when the order named the station,
    else by accession) and starts it."""
    item = await r.worklist(ref, "aet" if ref.ids.station_aet else "accession")
    uid = await r.mpps_start(ref, item)
    await r.at(ref, Stage.IN_PROGRESS)
    return uid


async def acquired_and_archived(r: Replay, ref: Referral, uid: str) -> None:
    await r.mpps_end(ref, uid, "COMPLETED", [2])  # 1 series of 2 images, as the archive will say
    await r.at(ref, Stage.ACQUIRED)
    await r.fhir(ref, "ImagingStudy available (PACS)", "pacs", r.msgs.imaging_study(ref.ids))
    await r.at(ref, Stage.ARCHIVED)


async def reported(r: Replay, ref: Referral, sample: str, status: str = "F", version: int = 1) -> None:
    """The report goes out; refloop delivers it to the EHR, which acknowledges that version."""
    words = {"P": "preliminary", "F": "final", "C": "corrected"}[status]
    await r.hl7(ref, f"ORU^R01 {words} report (OBR-25 {status})", r.msgs.report(ref.ids, sample, status=status))
    if status == "P":
        await r.at(ref, Stage.REPORTED_PRELIMINARY)
        return
    await r.until(ref, f"v{version} delivered and acknowledged", lambda lp: lp.stage == Stage.CLOSED and lp.acknowledged_version >= version)


async def performed(r: Replay, ref: Referral) -> None:
    await arrived(r, ref)
    await acquired_and_archived(r, ref, await started(r, ref))


# --- the stories -------------------------------------------------------------------------------


async def happy_path(r: Replay, ref: Referral, report: str = ORU_CDA) -> None:
    await ordered(r, ref)
    await booked(r, ref)
    await performed(r, ref)
    await reported(r, ref, report)


async def duplicate_then_happy(r: Replay, ref: Referral, dup: Referral) -> None:
    """The requester sends the same order twice, then cancels the second (ORC-1 CA, reason DUP)."""
    await ordered(r, ref)
    await ordered(r, dup)
    reason = f"DUP^Duplicate of order {ref.ids.placer}^HL70119"
    await r.hl7(dup, "ORM^O01 cancel (ORC-1 CA, duplicate)", r.msgs.orm(dup.ids, priority=dup.priority, modality=dup.modality, control="CA", reason=reason))
    await r.until(dup, "closed as duplicate", lambda lp: lp.stage == Stage.CLOSED)
    await booked(r, ref)
    await performed(r, ref)
    await reported(r, ref, ORU_SR)


async def preliminary_then_final(r: Replay, ref: Referral) -> None:
    await ordered(r, ref)
    await booked(r, ref)
    await performed(r, ref)
    await reported(r, ref, ORU_CDA, "P")
    await reported(r, ref, ORU_CDA, "F")


async def no_show(r: Replay, ref: Referral) -> None:
    await ordered(r, ref)
    await booked(r, ref)  # for now: nobody comes; the loop's own timer notices
    await r.until(ref, "the no-show timer (appointment + grace)", lambda lp: lp.stage == Stage.CLOSED, timeout=60, announce=True)


async def contraindication(r: Replay, ref: Referral) -> None:
    await ordered(r, ref)
    await booked(r, ref)
    await arrived(r, ref)
    uid = await started(r, ref)
    await r.mpps_end(ref, uid, "DISCONTINUED", reason="110503")  # patient allergic to media/contrast
    await r.until(ref, "the not-performed notice delivered", lambda lp: lp.stage == Stage.CLOSED)


async def amended_report(r: Replay, ref: Referral) -> None:
    await happy_path(r, ref)
    await reported(r, ref, ORU_CDA, "C", version=2)  # corrected after it went out: delivered again


async def identity_mismatch(r: Replay, ref: Referral) -> None:
    """All FHIR: the order, the booking, and a check-in against the appointment naming another patient."""
    await r.fhir(ref, "ServiceRequest active (order)", "ehr", r.msgs.service_request(ref.ids))
    await r.at(ref, Stage.ORDERED)
    await r.fhir(ref, f"Appointment booked for {ref.ids.appointment:%H:%M} UTC", "ris", r.msgs.appointment(ref.ids))
    await r.at(ref, Stage.SCHEDULED)
    other = f"{ref.ids.patient}-X"  # the desk picked another patient's record
    await r.fhir(ref, "Encounter in-progress (another patient)", "ris", r.msgs.encounter(ref.ids, other))
    await r.at(ref, Stage.ON_HOLD)


async def late_report(r: Replay, ref: Referral) -> None:
    await ordered(r, ref)
    await booked(r, ref)
    await performed(r, ref)
    # No report: the STAT final-report deadline passes; remind, then escalate.
    deadline = load_policy(POLICY).stages.final_report.stat.total_seconds()
    await r.until(ref, f"the STAT report deadline ({deadline:.0f} s after the images): remind, escalate", lambda lp: lp.escalation_level >= 2, timeout=90, announce=True)
    await reported(r, ref, ORU_SR)


# --- the day ---------------------------------------------------------------------------------------


def _slot(now: datetime, minutes: int) -> datetime:
    """A booking `minutes` from now, on a five-minute mark."""
    at = (now + timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    return at + timedelta(minutes=(5 - at.minute % 5) % 5)


def the_day(tag: str, now: datetime) -> list[Story]:
    """Nine referrals; `tag` makes every identifier of this run unique."""

    def ref(n: int, path: str, intended: Intended, *, placer: str = "omi", priority: str = "R", modality: str = "CT", station: str = "", minutes: int = 60) -> Referral:
        issuer = {"omi": "ADT1", "orm": "test1", "fhir": "fhir"}[placer]
        ns = "GHHPlacer" if placer == "orm" else ""
        appointment = now if minutes == 0 else _slot(now, minutes)
        ids = Ids.allocate(tag, n, issuer=issuer, placer_ns=ns, station_aet=station, appointment=appointment)
        return Referral(n, path, ids, intended, placer=placer, priority=priority, modality=modality)

    survivor = ref(2, "happy path · CT · urgent · critical result", COMPLETED, placer="orm", priority="A", minutes=75)
    duplicate = ref(3, "duplicate order, cancelled (ORC-1 CA)", Intended(Stage.CLOSED, Outcome.DUPLICATE), placer="orm", priority="A")
    duplicate = dataclasses.replace(duplicate, ids=dataclasses.replace(duplicate.ids, patient=survivor.ids.patient))  # same patient, same exam
    return [
        Story(happy_path, [ref(1, "happy path · CT · routine", COMPLETED, station="CT1", minutes=60)]),
        Story(duplicate_then_happy, [survivor, duplicate]),
        Story(preliminary_then_final, [ref(4, "happy path · MR · preliminary, then final", COMPLETED, modality="MR", station="MR1", minutes=90)]),
        Story(no_show, [ref(5, "no-show (timer: appointment + grace)", Intended(Stage.CLOSED, Outcome.DID_NOT_ATTEND), placer="orm", minutes=0)]),
        Story(contraindication, [ref(6, "contraindication: MPPS discontinued 110503", Intended(Stage.CLOSED, Outcome.NOT_PERFORMED), station="CT1", minutes=105)]),
        Story(amended_report, [ref(7, "amended report: corrected, acknowledged again", Intended(Stage.CLOSED, Outcome.COMPLETED, acknowledged_version=2), placer="orm", priority="A", minutes=120)]),
        Story(identity_mismatch, [ref(8, "identity mismatch at arrival (FHIR)", Intended(Stage.ON_HOLD), placer="fhir", minutes=135)]),
        Story(late_report, [ref(9, "late report: STAT, escalates, then closes", Intended(Stage.CLOSED, Outcome.COMPLETED, escalated=True), priority="S", modality="DX", station="DX1", minutes=30)]),
    ]
