"""Modality Worklist key matching (PS3.4 C.2.2.2 / Annex K) and response building, on datasets."""

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from refloop.domain import machine
from refloop.domain.policy import Policy
from refloop.domain.referral import PatientId
from refloop.gateways.dicom import charset
from refloop.gateways.dicom.items import worklist_item
from refloop.gateways.dicom.matching import QueryError, answer, matches
from tests.imaging import imaging_order

UTC = ZoneInfo("UTC")


def item(name="Müller^Jürgen", aets=("CT1", "CT2"), start=datetime(2026, 3, 5, 14, 30, tzinfo=timezone.utc), accession="A100", modality="CT"):
    order, booking = imaging_order("R1", accession=accession, name=name, start=start, station_aet=list(aets), modality=modality, patient=PatientId(value="P7", issuer="HOSP"))
    loop = machine.new_loop("R1")
    for e in (order, booking):
        loop = machine.apply(loop, e, start, Policy()).loop
    return worklist_item(loop, UTC)


def query(sps: dict | None = None, **top) -> Dataset:
    q = Dataset()
    for k, v in top.items():
        setattr(q, k, v)
    if sps is not None:
        s = Dataset()
        for k, v in sps.items():
            setattr(s, k, v)
        q.ScheduledProcedureStepSequence = Sequence([s] if sps else [])
    return q


@pytest.mark.parametrize(
    "q, expected",
    [
        (query(PatientName=""), True),  # universal
        (query(PatientName="*"), True),
        (query(PatientName="MÜLLER*"), True),  # PN: case-insensitive, wildcard
        (query(PatientName="M?ller^J?rgen"), True),
        (query(PatientName="Meier*"), False),
        (query(PatientID="P7", IssuerOfPatientID="HOSP"), True),
        (query(PatientID="P7", IssuerOfPatientID="OTHER"), False),
        (query(AccessionNumber="A100"), True),
        (query(AccessionNumber="A10"), False),
        (query(AccessionNumber="A1*"), True),
        (query({"Modality": "CT"}), True),
        (query({"Modality": "MR"}), False),
        (query(Modality="CT"), True),  # flat key, matched against the SPS item
        (query(Modality="MR"), False),
        (query({"ScheduledStationAETitle": "CT2"}), True),  # any of the item's AE titles
        (query({"ScheduledStationAETitle": ["MR1", "CT1"]}), True),  # any of the query's
        (query({"ScheduledStationAETitle": "MR1"}), False),
        (query(ScheduledStationAETitle="CT1"), True),
        (query({"ScheduledProcedureStepStartDate": "20260305"}), True),
        (query({"ScheduledProcedureStepStartDate": "20260304"}), False),
        (query({"ScheduledProcedureStepStartDate": "20260301-20260331"}), True),
        (query({"ScheduledProcedureStepStartDate": "-20260304"}), False),
        (query({"ScheduledProcedureStepStartDate": "20260305-"}), True),
        (query({"ScheduledProcedureStepStartTime": "1400-1500"}), True),
        (query({"ScheduledProcedureStepStartTime": "15-"}), False),
        (query({"ScheduledProcedureStepStartTime": "-14"}), True),  # upper bound 14 covers 14:59:59
        # Date and time together are one date-time range: 5 March 12:00 to 6 March 10:00.
        (query({"ScheduledProcedureStepStartDate": "20260305-20260306", "ScheduledProcedureStepStartTime": "120000-100000"}), True),
        (query({"ScheduledProcedureStepStartDate": "20260305", "ScheduledProcedureStepStartTime": "143000"}), True),
        (query({"ScheduledProcedureStepStartDate": "20260305", "ScheduledProcedureStepStartTime": "150000-"}), False),
        (query({}), True),  # empty SPS sequence: universal sequence matching
        (query(StudyInstanceUID=["1.2.3", "9.9"]), False),  # list of UID matching
        (query({"Modality": "CT", "ScheduledStationAETitle": "CT1"}, PatientName="MÜLLER*", AccessionNumber="A100"), True),
    ],
)
def test_matching(q, expected):
    assert matches(q, item()) is expected


def test_list_of_uids_matches_any():
    it = item()
    assert matches(query(StudyInstanceUID=["1.2.3", it.StudyInstanceUID]), it)


def test_sequence_key_absent_from_the_item_still_matches_return_keys_only():
    q = Dataset()
    code = Dataset()
    code.CodeValue = ""
    q.ReferencedStudySequence = Sequence([code])
    assert matches(q, item())
    code.CodeValue = "X"
    assert not matches(q, item())


def test_answer_has_exactly_the_requested_keys_at_their_levels():
    q = query({"Modality": "", "ScheduledStationAETitle": ""}, PatientName="", Modality="", MedicalAlerts="", AccessionNumber="")
    r = answer(q, item())
    assert [e.keyword for e in r] == ["AccessionNumber", "Modality", "PatientName", "MedicalAlerts", "ScheduledProcedureStepSequence"]
    assert r.Modality == "CT" and r.AccessionNumber == "A100" and str(r.PatientName) == "Müller^Jürgen"
    assert r.MedicalAlerts in (None, "")  # asked, unknown: returned empty
    sps = r.ScheduledProcedureStepSequence[0]
    assert [e.keyword for e in sps] == ["Modality", "ScheduledStationAETitle"]
    assert list(sps.ScheduledStationAETitle) == ["CT1", "CT2"]


def test_universal_sequence_returns_the_whole_item():
    r = answer(query({}), item())
    sps = r.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledProcedureStepID == "SPS-A100" and sps.ScheduledProcedureStepStatus == "SCHEDULED"


@pytest.mark.parametrize("bad", [{"ScheduledProcedureStepStartDate": "2026-03-05"}, {"ScheduledProcedureStepStartTime": "1a00"}, {"ScheduledProcedureStepStartDate": "-"}])
def test_invalid_date_or_time_key_is_a_query_error(bad):
    with pytest.raises(QueryError):
        matches(query(bad), item())


def test_response_charset_follows_the_peer_or_falls_back_to_utf8():
    accented = answer(query(PatientName=""), item())
    assert charset.choose("ISO_IR 100", accented) == "ISO_IR 100"
    assert charset.choose("", accented) == "ISO_IR 192"
    greek = answer(query(PatientName=""), item(name="Παπαδόπουλος^Νίκος"))
    assert charset.choose("ISO_IR 100", greek) == "ISO_IR 192"  # Latin-1 cannot carry it
    plain = answer(query(PatientName=""), item(name="Smith^Lucy"))
    assert charset.choose("", plain) is None and charset.choose("ISO_IR 100", plain) == "ISO_IR 100"


def test_worklist_item_values_fit_their_vr_length():
    from zoneinfo import ZoneInfo

    from refloop.domain.loop import Stage
    from refloop.gateways.dicom.items import worklist_item
    from tests.factories import happy_path
    from refloop.domain import machine as m
    from refloop.domain.policy import Policy

    loop = m.new_loop("PO-LONG-IDENTIFIER")
    for e in happy_path("PO-LONG-IDENTIFIER")[:2]:
        loop = m.apply(loop, e, e.occurred_at, Policy()).loop
    loop.referral.requester.practitioner = "Requesting^Physician" + "X" * 60  # 81 characters
    loop.referral.appointment.location = "Radiology department, building C, level 2"
    loop.referral.appointment.station_name = "A-very-long-station-name"
    assert loop.stage == Stage.SCHEDULED
    ds = worklist_item(loop, ZoneInfo("UTC"))
    from pydicom.valuerep import MAX_VALUE_LEN

    for elem in ds.iterall():
        if elem.keyword in ("ScheduledStationName", "ScheduledProcedureStepLocation", "CodeMeaning"):
            assert len(elem.value) <= MAX_VALUE_LEN[elem.VR], (elem.keyword, elem.value)
    assert all(len(part) <= 64 for part in str(ds.ReferringPhysicianName).split("^"))
    # Identifiers are never cut: a cut accession would no longer match its loop.
    assert ds.AccessionNumber == loop.referral.identifiers.accession_number
    assert ds.ScheduledProcedureStepSequence[0].ScheduledStationName == "A-very-long-stat"
