"""`refloop demo`: the whole day as a newcomer runs it (a subprocess with its own Temporal, worker,
gateways, EHR), and the re-keying its messages come from: each sample's structure kept,
identifiers unique per run and shared by one loop's messages, times moved to today."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.imagingstudy import ImagingStudy
from pydicom import dcmread

from refloop.cli.main import main
from refloop.demo import messages as m
from refloop.demo.day import POLICY, the_day
from refloop.demo.dicom_dump import parse_dump
from refloop.demo.messages import Ids, Messages
from refloop.demo.rekey import StructureChanged, rekey_hl7, structure
from refloop.demo.samples import Samples, SamplesMissing, find_samples
from refloop.domain.policy import PRIORITIES, StageTargets, load_policy
from refloop.gateways.hl7.translate import translate
from tests.conftest import SAMPLES

NOW = datetime.now(timezone.utc)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def refloop_command() -> list[str]:
    script = Path(sys.executable).parent / "refloop"
    return [str(script)] if script.exists() else [sys.executable, "-m", "refloop.cli.main"]


# --- the day, end to end --------------------------------------------------------------------------


def test_refloop_demo_exit_replays_the_day_and_every_loop_reaches_its_intended_outcome(tmp_path):
    temporal, ui, http, mllp, dicom = free_ports(5)
    data_dir = tmp_path / "demo"
    cmd = refloop_command() + [
        "demo", "--exit", "--samples", str(SAMPLES), "--data-dir", str(data_dir), "--pace", "0.1",
        "--port", str(temporal), "--ui-port", str(ui), "--http-port", str(http), "--mllp-port", str(mllp), "--dicom-port", str(dicom),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env={**os.environ, "COLUMNS": "240"})
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-3000:]

    referrals = [r for story in the_day("X", NOW) for r in story.referrals]
    progress, summary = out.split("The day's loops", 1)
    # While it ran: every step with its answer, through each protocol.
    for shown in ("HL7 OMI^O23 new order", "→ AA accepted", "DICOM MWL C-FIND", "MPPS N-SET COMPLETED", "FHIR ImagingStudy available", "EHR ← DiagnosticReport", "⚠ pager: escalate"):
        assert shown in progress, shown
    # The summary: one row per loop of the day, its intended outcome reached (✓, never ✗).
    for ref in referrals:
        [row] = [line for line in summary.splitlines() if f" {ref.path} " in line]
        assert "✓" in row and "✗" not in row, row
        assert ref.intended.describe() in row, row
    assert f"{len(referrals)} of {len(referrals)} loops reached their intended outcome" in summary
    assert f"http://127.0.0.1:{ui}/namespaces/default/workflows?query=WorkflowType%3D%22ReferralWorkflow%22" in summary
    # The log tells what happened without patient data (the samples' synthetic names, IDs).
    log = (data_dir / "demo.log").read_text()
    assert "inbound_accepted" in log and "delivered" in log
    for phi in ("Smith", "Lucy", "EVERYMAN", "Chalmers", "PID_1", "20141014"):
        assert phi not in log, phi


def test_demo_without_samples_or_with_a_busy_port_says_why(tmp_path, capsys):
    assert main(["demo", "--exit", "--samples", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "sample messages were not found" in err and str(tmp_path / "nowhere") in err and "REFLOOP_SAMPLES" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["demo", "--exit", "--samples", str(SAMPLES), "--data-dir", str(tmp_path / "d"), "--port", str(port)])
    assert code == 2 and f"temporal {port}" in capsys.readouterr().err


# --- the messages: re-keyed samples ----------------------------------------------------------------


def _ids(n: int, tag: str = "DTEST01", **kw) -> Ids:
    kw.setdefault("appointment", NOW + timedelta(hours=1))
    return Ids.allocate(tag, n, **kw)


def built(msgs: Messages, omi: Ids, orm: Ids) -> list[tuple[str, bytes]]:
    """Every HL7 message the day sends, with the sample it comes from."""
    return [
        (m.OMI, msgs.omi(omi, priority="S", modality="DX")),
        (m.ORM, msgs.orm(orm, priority="A", modality="CT")),
        (m.ORM, msgs.orm(orm, priority="A", modality="CT", control="CA", reason="DUP^Duplicate of order X^HL70119")),
        (m.SIU, msgs.booking(omi)),
        (m.SIU, msgs.booking(orm)),
        (m.A10, msgs.arrival(omi, m.A10)),
        (m.A04, msgs.arrival(orm, m.A04)),
        (m.ORU_CDA, msgs.report(omi, m.ORU_CDA, status="P")),
        (m.ORU_CDA, msgs.report(orm, m.ORU_CDA, status="C")),
        (m.ORU_SR, msgs.report(omi, m.ORU_SR, status="F")),
    ]


def test_rekeyed_hl7_keeps_each_samples_segments_and_fields():
    samples = Samples(SAMPLES)
    msgs = Messages(samples)
    omi, orm = _ids(1, issuer="ADT1", station_aet="CT1"), _ids(2, issuer="test1", placer_ns="GHHPlacer")
    for name, data in built(msgs, omi, orm):
        assert structure(data) == structure(samples.hl7(name)), name
        assert data != samples.hl7(name)
    with pytest.raises(StructureChanged):  # the SIU sample has no SCH-27: adding one is refused
        rekey_hl7(samples.hl7(m.SIU), {"SCH.F27": "F1"})


def test_one_loops_messages_name_the_same_referral_patient_and_study_with_todays_times():
    msgs = Messages(Samples(SAMPLES))
    endpoints = {app: "http://ehr.test/fhir" for app in m.PLACER_APPLICATIONS}
    for ids, arrival in ((_ids(1, issuer="ADT1", station_aet="CT1"), m.A10), (_ids(2, issuer="test1", placer_ns="GHHPlacer"), m.A04)):
        order = msgs.omi(ids, priority="R", modality="CT") if not ids.placer_ns else msgs.orm(ids, priority="R", modality="CT")
        [o], [b], [a], [r] = (translate(x, ("P",), endpoints).items for x in (order, msgs.booking(ids), msgs.arrival(ids, arrival), msgs.report(ids)))
        for item in (o, b, r):
            assert item.keys.placer_order_number == ids.placer and item.keys.placer_system == ids.placer_ns
        assert o.event.placer_order_number == ids.placer and o.event.requester.endpoint == "http://ehr.test/fhir"
        assert o.event.patient.id == b.event.patient == a.event.patient  # ID and issuer, across registries' samples
        assert o.event.patient.id.value == ids.patient and o.keys.accession_number == r.keys.accession_number == ids.accession
        assert r.keys.study_instance_uid == ids.study_uid
        assert b.event.appointment.start == ids.appointment.replace(microsecond=0)
        for item in (o, b, a, r):
            assert abs(item.event.occurred_at - datetime.now(timezone.utc)) < timedelta(minutes=5), item.event  # today, not 2022


def test_identifiers_are_unique_per_run_and_the_duplicate_shares_only_its_patient():
    def identifiers(tag: str) -> dict[int, set[str]]:
        refs = [r for story in the_day(tag, NOW) for r in story.referrals]
        return {r.n: {r.ids.placer, r.ids.filler, r.ids.accession, r.ids.rp_id, r.ids.sps_id, r.ids.study_uid, r.ids.patient} for r in refs}

    one, two = identifiers("DAAAAAA"), identifiers("DBBBBBB")
    assert not set().union(*one.values()) & set().union(*two.values())
    shared = {(a, b): one[a] & one[b] for a in one for b in one if a < b and one[a] & one[b]}
    assert list(shared) == [(2, 3)] and len(shared[(2, 3)]) == 1  # the duplicate order: same patient, nothing else
    referral_ids = [r.referral_id for story in the_day("DAAAAAA", NOW) for r in story.referrals]
    assert len(set(referral_ids)) == len(referral_ids) == 9


def _paths(value, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in _paths(v, f"{prefix}.{k}")} | {prefix}
    if isinstance(value, list):
        return {p for v in value for p in _paths(v, f"{prefix}[]")} | {prefix}
    return {prefix}


def test_rekeyed_fhir_keeps_each_samples_shape_and_is_valid_r4():
    samples = Samples(SAMPLES)
    msgs = Messages(samples)
    ids = _ids(8, issuer="fhir")
    made = {
        m.SERVICE_REQUEST: msgs.service_request(ids),
        m.APPOINTMENT: msgs.appointment(ids),
        m.IMAGING_STUDY: msgs.imaging_study(ids),
        m.ENCOUNTER: msgs.encounter(ids, "other"),
    }
    for name, resource in made.items():
        original = samples.fhir(name)
        added = {".appointment", ".appointment[]", ".appointment[].reference"} if name == m.ENCOUNTER else set()
        assert _paths(resource) == _paths(original) | added, name
        assert resource["id"] != original["id"] and ids.placer in resource["id"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    study = ImagingStudy.model_validate(made[m.IMAGING_STUDY])
    assert study.identifier[0].value == f"urn:oid:{ids.study_uid}" and study.identifier[1].value == ids.accession


def test_worklist_query_parsed_from_the_dcmtk_dump_is_what_dump2dcm_makes(tmp_path):
    text = Samples(SAMPLES).dump(m.MWL_QUERY)
    ours = parse_dump(text)
    assert ours.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "AA2"
    if not shutil.which("dump2dcm"):
        pytest.skip("DCMTK dump2dcm not installed")
    subprocess.run(["dump2dcm", str(SAMPLES / "dicom" / m.MWL_QUERY), str(tmp_path / "q.dcm")], check=True, capture_output=True)
    theirs = dcmread(tmp_path / "q.dcm")

    def flat(ds, prefix=""):
        out = {}
        for el in ds:
            if el.VR == "SQ":
                for i, item in enumerate(el.value):
                    out |= flat(item, f"{prefix}{el.tag}[{i}].")
            else:
                out[f"{prefix}{el.tag}"] = (el.VR, str(el.value or ""))
        return out

    assert flat(ours) == flat(theirs)


def test_samples_are_found_beside_the_repository_or_where_told(tmp_path, monkeypatch):
    assert find_samples() == SAMPLES
    monkeypatch.setenv("REFLOOP_SAMPLES", str(tmp_path))
    assert find_samples() == SAMPLES  # an env path without the samples' folders is passed over
    with pytest.raises(SamplesMissing, match="were not found"):
        find_samples(tmp_path)


def test_the_demo_policy_is_short_only_where_the_day_needs_a_timer_to_fire():
    policy = load_policy(POLICY)
    assert policy.arrival_grace <= timedelta(seconds=30)  # the no-show
    assert policy.stages.final_report.stat <= timedelta(seconds=30)  # the late STAT report (no other loop is STAT)
    assert [r.priority for story in the_day("X", NOW) for r in story.referrals].count("S") == 1
    for stage in StageTargets.model_fields:  # every other deadline is far beyond the day's minute
        for priority in PRIORITIES:
            if (stage, priority) != ("final_report", "stat"):
                assert getattr(getattr(policy.stages, stage), priority) >= timedelta(minutes=15), (stage, priority)
    assert policy.critical_acknowledgment >= timedelta(minutes=15)
