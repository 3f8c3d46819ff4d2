"""HL7 translation without sockets: character sets, separators, every message mapping, ACKs."""

from __future__ import annotations

from datetime import datetime

import hl7
import pytest

from refloop.domain import events as ev
from refloop.domain.referral import PatientId, Priority
from refloop.gateways.hl7.ack import build_ack
from refloop.gateways.hl7.decode import decode_message
from refloop.gateways.hl7.errors import Hl7Error
from refloop.gateways.hl7.server import unframe
from refloop.gateways.hl7.translate import SUPPORTED, translate
from tests.hl7kit import raw, variant

OMI = "dcm4che/OMI_O23-ImagingOrder.hl7"
ORU = "dcm4che/ORU_R01-SR.hl7"
SIU = "microsoft-fhir-converter/SIU-S12-01.hl7"
A40 = "dcm4che/ADT_A40-PatientMerge.hl7"


def one(data: bytes, **kw) -> ev.EventBase:
    t = translate(data, **kw)
    assert t.error is None, str(t.error)
    (item,) = t.items
    return item.event


def error(data: bytes, **kw) -> Hl7Error:
    t = translate(data, **kw)
    assert t.error is not None and not t.items
    return t.error


# --- bytes -> text --------------------------------------------------------------------------


def _msh(charset: str, pid_name: bytes) -> bytes:
    return b"MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.5.1||||||" + charset.encode() + b"\rPID|||X^^^I||" + pid_name


def test_latin1_declared_in_msh18_is_decoded_as_latin1():
    d = decode_message(_msh("8859/1", "Müller^Zoë".encode("latin_1")))
    assert d.charset == "latin_1" and "Müller^Zoë" in d.text and not d.note


def test_utf8_declared_in_msh18_is_decoded_as_utf8():
    d = decode_message(_msh("UNICODE UTF-8", "Müller^Zoë".encode("utf_8")))
    assert d.charset == "utf_8" and "Müller^Zoë" in d.text


def test_other_8859_parts_are_honoured():
    d = decode_message(_msh("8859/7", "Παπαδόπουλος".encode("iso8859_7")))
    assert "Παπαδόπουλος" in d.text


def test_latin1_declared_but_utf8_sent_is_read_as_utf8_and_says_so():
    """The dcm4che OMI sample declares 8859/1 and carries a UTF-8 en dash in OBR-31."""
    d = decode_message(raw(OMI))
    assert d.charset == "utf_8" and "12 –35." in d.text and "8859/1" in d.note


def test_unknown_character_set_is_rejected_naming_msh18():
    err = pytest.raises(Hl7Error, decode_message, _msh("EBCDIC", b"X")).value
    assert (err.code, err.location) == (103, "MSH-18") and "'EBCDIC'" in err.reason
    assert translate(_msh("EBCDIC", b"X")).error.code == 103


def test_no_msh18_falls_back_from_utf8_to_latin1():
    utf8 = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.5\rPID|||X^^^I||" + "Zoë".encode("utf_8")
    latin = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.5\rPID|||X^^^I||" + "Zoë".encode("latin_1")
    assert "Zoë" in decode_message(utf8).text and "Zoë" in decode_message(latin).text


@pytest.mark.parametrize("sep", [b"\r", b"\n", b"\r\n"])
def test_cr_lf_and_crlf_segment_separators_give_the_same_events(sep):
    data = raw(OMI).replace(b"\r", sep)
    assert one(data) == one(raw(OMI))


def test_utf8_bom_is_ignored():
    assert one(b"\xef\xbb\xbf" + raw(OMI)) == one(raw(OMI))


# --- header ---------------------------------------------------------------------------------


def test_not_hl7_at_all_is_rejected():
    err = error(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert err.code == 100 and err.segment == "MSH" and "must begin with an MSH segment" in err.reason


def test_message_starting_with_another_segment_is_rejected():
    text = raw(OMI).split(b"\r", 1)[1]  # PID first, MSH missing
    assert "must begin with an MSH segment" in error(text).reason


def test_missing_control_id_is_rejected_at_msh10():
    err = error(variant(OMI, {"MSH.F10": ""}))
    assert (err.code, err.location) == (101, "MSH-10")


def test_unsupported_event_and_type_say_what_is_supported():
    a31 = error(raw("dcm4che/ADT_A31-UpdatePersonInfo.hl7"))
    assert a31.code == 201 and a31.location == "MSH-9" and all(k in a31.reason for k in SUPPORTED)
    assert error(variant(OMI, {"MSH.F9": "QRY^Q01"})).code == 200


def test_processing_id_and_version_are_checked():
    assert error(variant(OMI, {"MSH.F11": "T"})).code == 202
    assert one(variant(OMI, {"MSH.F11": "T"}), processing_ids={"P", "T"}).kind == "order_placed"
    assert error(variant(OMI, {"MSH.F12": "3.0"})).code == 203


def test_a_message_without_segment_separators_gets_a_hint():
    flat = raw(OMI).replace(b"\r", b"\\r")  # a sender that wrote the escape literally
    err = error(flat)
    assert err.code == 100 and "segment separators missing" in err.reason


def test_sender_and_keys_scope_idempotency():
    t = translate(raw(OMI))
    assert (t.sender, t.message_key, t.message_type) == ("MESA_OF/XYZ_RADIOLOGY", "1001125", "OMI^O23")
    assert t.items[0].event.event_id == "hl7:MESA_OF/XYZ_RADIOLOGY:1001125"


# --- orders ---------------------------------------------------------------------------------


def test_new_order_maps_patient_requester_service_and_ids():
    e = one(raw(OMI))
    assert isinstance(e, ev.OrderPlaced)
    assert e.placer_order_number == "PlacerOrderNumberImagingServiceRequest"
    assert e.patient and e.patient.id == PatientId(value="PID_1", issuer="ADT1") and e.patient.birth_date == "20141014"
    assert e.identifiers.sps_id == "ScheduledProcStepID" and e.service.modality == "CT"
    assert e.appointment and e.appointment.station_name == "ScheduledStationName"


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"TQ1.F9": "S"}, Priority.STAT),
        ({"ORC.F7": "^^^^^A"}, Priority.URGENT),
        ({"ORC.F7": "^^^^^R", "TQ1.F9": ""}, Priority.ROUTINE),
        ({}, Priority.ROUTINE),  # the sample's "RequestedProcedurePriority" is no table value
    ],
)
def test_priority_from_tq1_9_or_orc_7(changes, expected):
    assert one(variant(OMI, changes)).service.priority == expected


def test_placer_system_qualifies_the_referral():
    t = translate(variant(OMI, {"ORC.F2": "PO-7^HIS_A"}))
    keys = t.items[0].keys
    assert (keys.placer_order_number, keys.placer_system) == ("PO-7", "HIS_A")


def test_cancel_with_duplicate_reason():
    e = one(variant(OMI, {"ORC.F1": "CA", "ORC.F16": "DUP^Duplicate order^L"}))
    assert isinstance(e, ev.ReferralCancelled) and e.reason == "duplicate"


def test_cancel_without_reason_is_the_requesters():
    e = one(variant(OMI, {"ORC.F1": "CA"}))
    assert isinstance(e, ev.ReferralCancelled) and e.reason == "requester"


def test_discontinue_keeps_its_reason_and_cid_9300_code():
    e = one(variant(OMI, {"ORC.F1": "DC", "ORC.F16": "110503^Patient allergic to media/contrast^DCM"}))
    assert isinstance(e, ev.UnableToPerform)
    assert (e.reason_code, e.reason) == ("110503", "Patient allergic to media/contrast")


def test_change_order_carries_the_new_service():
    e = one(variant(OMI, {"ORC.F1": "XO", "OBR.F4": "24725-4^CT Head^LN"}))
    assert isinstance(e, ev.OrderChanged) and e.service and e.service.procedure_code == "24725-4"


def test_unsupported_order_control_is_rejected_at_orc1():
    err = error(variant(OMI, {"ORC.F1": "SC"}))
    assert (err.code, err.location) == (103, "ORC-1") and "NW (new order)" in err.reason


def test_new_order_without_placer_number_is_rejected():
    err = error(variant(OMI, {"ORC.F2": "", "OBR.F2": ""}))
    assert (err.code, err.location) == (101, "ORC-2")


def test_truncated_order_is_rejected_for_the_missing_segment():
    truncated = b"\r".join(raw(OMI).split(b"\r")[:3])  # MSH, PID, NTE
    err = error(truncated)
    assert (err.code, err.segment) == (100, "ORC")


# --- scheduling -----------------------------------------------------------------------------


def _siu(trigger: str) -> bytes:
    return variant(SIU, {"MSH.F9": f"SIU^{trigger}^SIU_{trigger}", "SCH.F26": "PO-9^HIS", "SCH.F27": "F-9"})


def test_booking_with_order_numbers():
    t = translate(_siu("S12"))
    e = t.items[0].event
    assert isinstance(e, ev.Scheduled)
    assert e.appointment.start == datetime.fromisoformat("2021-09-24T09:30:00+02:15")  # TQ1-7
    assert e.appointment.location == "055 / Room01 / GH Clinic"  # AIL-3: point of care, room, (bed), facility
    assert e.patient == PatientId(value="PATID1234", issuer="test1")
    keys = t.items[0].keys
    assert (keys.placer_order_number, keys.placer_system, keys.filler_order_number) == ("PO-9", "HIS", "F-9")


@pytest.mark.parametrize(
    "trigger, kind", [("S13", "rescheduled"), ("S15", "appointment_cancelled"), ("S26", "did_not_attend")]
)
def test_other_scheduling_triggers(trigger, kind):
    assert one(_siu(trigger)).kind == kind


# --- arrivals and merges --------------------------------------------------------------------


def test_arrival_binds_by_patient_and_issuer_only_while_awaiting_arrival():
    t = translate(raw("microsoft-fhir-converter/ADT-A04-01.hl7"))
    keys = t.items[0].keys
    assert keys.patient == PatientId(value="PATID1234", issuer="test1")  # the MR, not the SSN repetition
    assert keys.match_patient_awaiting_arrival and not keys.lookup()


def test_merge_takes_prior_id_from_mrg1_and_borrows_the_issuer_if_missing():
    e = one(variant(A40, {"MRG.F1": "OLD_PID_1"}))
    assert isinstance(e, ev.PatientMerged) and e.old == PatientId(value="OLD_PID_1", issuer="ADT1")
    assert error(variant(A40, drop=("MRG",))).code == 100


# --- results --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obr25, obx11, kind, detail",
    [
        ("P", "", "report_issued", "preliminary"),
        ("F", "", "report_issued", "final"),
        ("C", "", "report_revised", "corrected"),
        ("M", "", "report_revised", "amended"),
        ("X", "", "report_withdrawn", "cancelled"),
        ("F", "W", "report_withdrawn", "entered_in_error"),
        ("F", "C", "report_revised", "corrected"),
    ],
)
def test_report_status_mapping(obr25, obx11, kind, detail):
    changes = {"OBR.F25": obr25}
    if obx11:
        changes["OBX.F11"] = obx11
    e = one(variant(ORU, changes))
    what = {"report_issued": "status", "report_revised": "revision", "report_withdrawn": "reason"}[e.kind]
    assert (e.kind, getattr(e, what)) == (kind, detail)


def test_unknown_or_missing_result_status_is_rejected_at_obr25():
    err = error(variant(ORU, {"OBR.F25": "R"}))
    assert (err.code, err.location) == (103, "OBR-25") and "'R' is not supported" in err.reason
    assert error(variant(ORU, {"OBR.F25": ""})).code == 101


def test_report_keys_include_the_study_uid_from_obx_113014():
    keys = translate(raw(ORU)).items[0].keys
    assert keys.study_instance_uid == "1.2.392.200036.9125.0.198811291108.7"
    assert keys.accession_number == "AccessionNumber"


# --- ACK ------------------------------------------------------------------------------------


def _parse(ack: str) -> hl7.Message:
    return hl7.parse(ack)


def test_ack_copies_control_id_and_charset_and_swaps_applications():
    t = translate(raw(OMI))
    ack = _parse(build_ack(t.message, "AA", "accepted"))
    msh = ack.segment("MSH")
    assert (str(msh[3]), str(msh[5]), str(msh[9]), str(msh[18])) == ("MESA_IM", "MESA_OF", "ACK^O23^ACK", "8859/1")
    assert (str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])) == ("AA", "1001125")


def test_err_segment_names_segment_occurrence_field_code_and_reason():
    t = translate(variant("microsoft-fhir-converter/ORM-O01-03.hl7", {"ORC2.F1": "ZZ"}))
    ack = _parse(build_ack(t.message, "AR", str(t.error), t.error))
    err = ack.segment("ERR")
    assert str(err[2]) == "ORC^2^1"  # ERR-2: the second ORC, field 1
    assert err.extract_field(1, 3, 1, 1) == "103" and err.extract_field(1, 3, 1, 2) == "Table value not found"
    assert str(err[4]) == "E" and "order control 'ZZ' is not supported" in err.extract_field(1, 8)


def test_err_segment_in_v23_uses_err1():
    t = translate(variant(OMI, {"MSH.F12": "2.3", "ORC.F1": "ZZ"}))
    err = _parse(build_ack(t.message, "AR", str(t.error), t.error)).segment("ERR")
    assert str(err[1]) == "ORC^1^1^103&Table value not found&HL70357"


def test_ack_text_is_escaped():
    t = translate(raw("dcm4che/ADT_A31-UpdatePersonInfo.hl7"))
    ack = build_ack(t.message, "AR", str(t.error), t.error)
    assert "ADT\\S\\A31" in ack and _parse(ack).segment("ERR").extract_field(1, 8).startswith("ADT^A31 is not supported")


def test_ack_for_a_message_without_msh():
    t = translate(b"hello")
    ack = _parse(build_ack(t.message, "AR", str(t.error), t.error))
    assert str(ack.segment("MSA")[1]) == "AR" and str(ack.segment("MSH")[9]) == "ACK"


def test_ack_for_a_truncated_header():
    t = translate(b"MSH|^~\\&|SENDER|FAC")
    assert t.error.location == "MSH-9"
    ack = _parse(build_ack(t.message, "AR", str(t.error), t.error))
    assert str(ack.segment("MSH")[5]) == "SENDER" and str(ack.segment("MSA")[1]) == "AR"


# --- framing --------------------------------------------------------------------------------


def test_unframe_skips_garbage_before_the_start_block():
    assert unframe(b"junk\x00\xff\x0bMSH|x\x1c\r") == (b"MSH|x", 6)
    assert unframe(b"\x0bMSH|half\x0bMSH|whole\x1c\r") == (b"MSH|whole", 9)
    assert unframe(b"MSH|no start block\x1c\r") == (b"MSH|no start block", 0)


def test_result_endpoint_of_the_placer_application_is_filled_in():
    t = translate(raw(OMI), requester_endpoints={"MESA_OF": "http://ehr.test/results"})
    assert t.items[0].event.requester.endpoint == "http://ehr.test/results"
    assert translate(raw(OMI), requester_endpoints={"OTHER": "http://x"}).items[0].event.requester.endpoint == ""
    from refloop.config import Settings

    assert Settings(hl7_result_endpoints="MESA_OF=http://a, ORDApp/GHHSFacility=http://b").hl7_requester_endpoints() == {
        "MESA_OF": "http://a",
        "ORDApp/GHHSFacility": "http://b",
    }
