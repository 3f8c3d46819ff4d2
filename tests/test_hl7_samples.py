"""Every public HL7 v2 sample, byte for byte, through a real MLLP socket into a real Temporal
server: the ACK, and where a loop results, the loop's state (query `state`).

Each test runs in its own Temporal namespace (the samples reuse order numbers)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from refloop.domain.loop import Stage
from refloop.domain.referral import PatientId
from refloop.store.repo import patient_key
from tests.hl7kit import ack_code, err_text, raw, sample_names, send, stack, variant  # noqa: F401 (fixture)

DCM = "dcm4che/"
MS = "microsoft-fhir-converter/"
DCM_PLACER = "PlacerOrderNumberImagingServiceRequest"

# Rejected, and why (a person reading the ERR segment should agree).
REJECTED = {
    DCM + "ADT_A31-UpdatePersonInfo-Veterinary.hl7": (201, "ADT^A31 is not supported; supported: ORM^O01, OMI^O23"),
    DCM + "ADT_A31-UpdatePersonInfo.hl7": (201, "ADT^A31 is not supported; supported: ORM^O01, OMI^O23"),
    # Upstream sample without SCH: nothing names the order (or even the appointment).
    DCM + "SIU_S12-NewAppointmentBooking.hl7": (100, "SIU^S12 has no SCH segment (required)"),
    # An inpatient admission is not an arrival for an examination (A04/A10 are).
    MS + "ADT-A01-01.hl7": (201, "ADT^A01 is not supported; supported:"),
    # MSH-11 T: a training message must not move real loops.
    MS + "ORU-R01-01.hl7": (202, "processing ID 'T' (MSH-11) is not accepted here"),
    MS + "REF-I12-01.hl7": (200, "REF^I12 is not supported; supported:"),
    # Appointment IDs only (SCH-1/2), no order number in SCH-26/27.
    MS + "SIU-S12-01.hl7": (101, "the appointment names no order: SCH-26 (placer order number) and SCH-27"),
    MS + "SIU-S13-01.hl7": (101, "the appointment names no order: SCH-26 (placer order number) and SCH-27"),
    MS + "SIU-S15-01.hl7": (101, "the appointment names no order: SCH-26 (placer order number) and SCH-27"),
}
ACCEPTED = {
    DCM + "ADT_A40-PatientMerge.hl7",
    DCM + "ADT_A47-ChangePatientID.hl7",
    DCM + "OMG_O19-GeneralClinicalOrder-Eyecare.hl7",
    DCM + "OMI_O23-ImagingOrder.hl7",
    DCM + "ORM_O01-GeneralOrder.hl7",
    DCM + "ORU_R01-CDA.hl7",
    DCM + "ORU_R01-PDF.hl7",
    DCM + "ORU_R01-SR.hl7",
    MS + "ADT-A04-01.hl7",
    MS + "ADT-A10-01.hl7",
    MS + "ORM-O01-01.hl7",
    MS + "ORM-O01-03.hl7",
}


def test_every_sample_has_an_expected_outcome():
    assert set(sample_names()) == set(REJECTED) | ACCEPTED


@pytest.mark.parametrize("name", sorted(REJECTED))
async def test_rejected_sample_is_answered_ar_with_the_reason(stack, name):
    code, reason = REJECTED[name]
    ack = await send(stack.port, raw(name))
    assert ack_code(ack) == "AR"
    assert str(ack.segment("MSA")[2]) == _control_id(name)  # MSA-2 = the message's MSH-10
    err = ack.segment("ERR")
    assert err.extract_field(1, 3) == str(code)  # ERR-3 (table 0357)
    assert reason in err_text(ack)
    # Kept, with its reason, and no loop started.
    (row,) = stack.rows()
    assert row.status == "rejected" and reason.split(";")[0] in row.error
    assert row.raw.startswith(("MSH", "\ufeffMSH"))
    assert stack.store.loops() == []


async def test_omi_imaging_order_places_the_order_with_its_ipc_identifiers(stack):
    ack = await send(stack.port, raw(DCM + "OMI_O23-ImagingOrder.hl7"))
    assert ack_code(ack) == "AA" and str(ack.segment("MSA")[2]) == "1001125"
    assert str(ack.segment("MSH")[9]) == "ACK^O23^ACK" and str(ack.segment("MSH")[18]) == "8859/1"
    loop = await stack.loop(DCM_PLACER, lambda lp: lp.stage == Stage.ORDERED)
    ref = loop.referral
    assert loop.stage == Stage.ORDERED
    assert ref.patient and ref.patient.id == PatientId(value="PID_1", issuer="ADT1")
    ids = ref.identifiers
    assert (ids.accession_number, ids.requested_procedure_id, ids.sps_id) == ("AccessionNumber", "RequestedProcID", "ScheduledProcStepID")
    assert ids.study_instance_uid == "1.2.392.200036.9125.0.198811291108.7"
    assert ids.filler_order_number == "FillerOrderNumberImagingServiceRequest"
    assert (ref.service.procedure_code, ref.service.modality, ref.service.priority.value) == ("10637-7", "CT", "routine")
    assert ref.appointment.start == datetime(2000, 8, 16, 15, 10, tzinfo=timezone.utc)  # TQ1-7
    assert ref.appointment.station_aet == ["ScheduledStationAET1", "ScheduledStationAET2"]  # IPC-9
    assert "RequestingPhysicianFN" in ref.requester.practitioner
    # The correlation index now finds the loop by its department identifiers.
    assert await stack.persisted(lambda s: s.find_referrals("accession", "AccessionNumber") == [DCM_PLACER])


async def test_orm_file_that_says_omi_is_handled_as_omi(stack):
    """Upstream quirk: ORM_O01-GeneralOrder.hl7 carries MSH-9 OMI^O23^OMI_O23 (no IPC)."""
    ack = await send(stack.port, raw(DCM + "ORM_O01-GeneralOrder.hl7"))
    assert ack_code(ack) == "AA" and str(ack.segment("MSH")[9]) == "ACK^O23^ACK"
    loop = await stack.loop(DCM_PLACER, lambda lp: lp.stage == Stage.ORDERED)
    assert loop.stage == Stage.ORDERED
    ids = loop.referral.identifiers
    # No IPC: IHE's OBR-18/19/20 and ZDS-1 carry the same identifiers.
    assert (ids.accession_number, ids.requested_procedure_id, ids.sps_id) == ("AccessionNumber", "RequestedProcID", "ScheduledProcStepID")
    assert ids.study_instance_uid == "1.2.392.200036.9125.0.198811291108.7"
    (row,) = stack.rows()
    assert row.message_type == "OMI^O23" and row.status == "accepted"


async def test_omg_general_clinical_order_places_the_order(stack):
    ack = await send(stack.port, raw(DCM + "OMG_O19-GeneralClinicalOrder-Eyecare.hl7"))
    assert ack_code(ack) == "AA"
    loop = await stack.loop(DCM_PLACER, lambda lp: lp.stage == Stage.ORDERED)
    assert loop.stage == Stage.ORDERED and loop.referral.service.procedure_display == "Microscopic Observation"


@pytest.mark.parametrize("name", ["ORU_R01-CDA.hl7", "ORU_R01-PDF.hl7", "ORU_R01-SR.hl7"])
async def test_final_report_samples_bring_the_ordered_loop_to_reported_final(stack, name):
    assert ack_code(await send(stack.port, raw(DCM + "OMI_O23-ImagingOrder.hl7"))) == "AA"
    ack = await send(stack.port, raw(DCM + name))
    assert ack_code(ack) == "AA"
    loop = await stack.loop(DCM_PLACER, lambda lp: lp.stage == Stage.REPORTED_FINAL)
    assert loop.stage == Stage.REPORTED_FINAL
    assert (loop.report.status, loop.report.version) == ("final", 1)
    assert loop.report.report_id == "FillerOrderNumberImagingServiceRequest"
    if name == "ORU_R01-SR.hl7":  # OBX-8 AA (critical abnormal) on findings; TX findings as text
        assert loop.report.critical
        assert "small mass in the left lung" in loop.report.conclusion


@pytest.mark.parametrize("name", ["ADT_A40-PatientMerge.hl7", "ADT_A47-ChangePatientID.hl7"])
async def test_merge_samples_repoint_the_loop_of_the_prior_patient_id(stack, name):
    # The sample order, re-keyed to the patient the merge retires.
    order = variant(DCM + "OMI_O23-ImagingOrder.hl7", {"PID.F3": "OLD_PID_1^^^ADT1"})
    assert ack_code(await send(stack.port, order)) == "AA"
    old, new = PatientId(value="OLD_PID_1", issuer="ADT1"), PatientId(value="NEW_PID_1", issuer="ADT1")
    assert await stack.persisted(lambda s: s.find_referrals("patient", patient_key(old)) == [DCM_PLACER])
    ack = await send(stack.port, raw(DCM + name))
    assert ack_code(ack) == "AA"
    loop = await stack.loop(DCM_PLACER, lambda lp: lp.referral.patient.id == new)
    assert loop.referral.patient and loop.referral.patient.id == new
    assert await stack.persisted(lambda s: s.find_referrals("patient", patient_key(new)) == [DCM_PLACER])
    assert stack.store.find_referrals("patient", patient_key(old)) == []


async def test_merge_sample_without_an_open_loop_is_accepted_and_changes_nothing(stack):
    ack = await send(stack.port, raw(DCM + "ADT_A40-PatientMerge.hl7"))
    assert ack_code(ack) == "AA"
    (row,) = stack.rows()
    assert (row.status, row.referral_id, row.event_kind) == ("accepted", "", "patient_merged")
    assert stack.store.loops() == []


async def test_ms_orm_places_the_ct_head_order(stack):
    ack = await send(stack.port, raw(MS + "ORM-O01-01.hl7"))  # UTF-8 with BOM, LF separators
    assert ack_code(ack) == "AA" and str(ack.segment("MSA")[2]) == "MSG00018"
    loop = await stack.loop("GHHPlacer:1101", lambda lp: lp.stage == Stage.ORDERED)
    ref = loop.referral
    assert loop.stage == Stage.ORDERED and ref.placer_order_number == "1101"
    assert ref.patient and ref.patient.id == PatientId(value="PATID1234", issuer="test1")
    assert (ref.service.procedure_code, ref.service.procedure_display) == ("24725-4", "CT Head")
    assert ref.identifiers.filler_order_number == "1201"
    assert "ORDPROVIDER" in ref.requester.practitioner


async def test_ms_orm_with_two_orders_places_two_loops(stack):
    ack = await send(stack.port, raw(MS + "ORM-O01-03.hl7"))
    assert ack_code(ack) == "AA"
    head = await stack.loop("GHHPlacer:1101", lambda lp: lp.stage == Stage.ORDERED)
    brain = await stack.loop("GHHPlacer:2203", lambda lp: lp.stage == Stage.ORDERED)
    assert head.referral.service.procedure_display == "CT Head"
    assert brain.referral.service.procedure_display == "MR Brain"
    assert brain.referral.appointment.start == datetime.fromisoformat("2021-10-20T11:26:00+02:15")  # OBR-27.4
    assert sorted(r.message_key for r in stack.rows()) == ["MSG00018#1", "MSG00018#2"]


async def test_ms_a04_registers_the_arrival_of_the_booked_patient(stack):
    assert ack_code(await send(stack.port, raw(MS + "ORM-O01-01.hl7"))) == "AA"
    assert await stack.persisted(lambda s: (lp := s.get_loop("GHHPlacer:1101")) is not None and lp.stage == Stage.ORDERED)
    ack = await send(stack.port, raw(MS + "ADT-A04-01.hl7"))  # PID-3 PATID1234 issued by test1
    assert ack_code(ack) == "AA"
    loop = await stack.loop("GHHPlacer:1101", lambda lp: lp.stage == Stage.ARRIVED)
    assert loop.stage == Stage.ARRIVED


async def test_ms_a10_under_another_issuer_does_not_bind_the_arrival(stack):
    assert ack_code(await send(stack.port, raw(MS + "ORM-O01-01.hl7"))) == "AA"
    assert await stack.persisted(lambda s: (lp := s.get_loop("GHHPlacer:1101")) is not None and lp.stage == Stage.ORDERED)
    ack = await send(stack.port, raw(MS + "ADT-A10-01.hl7"))  # PATID1234 again, but issued by ADT1
    assert ack_code(ack) == "AA"  # kept: it may be someone else's arrival
    rows = stack.rows()
    assert rows[-1].message_type == "ADT^A10" and rows[-1].status == "parked"
    loop = await stack.loop("GHHPlacer:1101")
    assert loop.stage == Stage.ORDERED and "arrived" not in [t.kind for t in loop.timeline]


def _control_id(name: str) -> str:
    first_line = raw(name).decode("latin_1").lstrip("\ufeff\xef\xbb\xbf").replace("\n", "\r").split("\r")[0]
    return first_line.split("|")[9]
