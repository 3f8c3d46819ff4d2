"""Our MPPS SCP with a pynetdicom SCU acting as the modality: N-CREATE / N-SET become loop
events through the Intake on a real Temporal server; MPPS state persists in SQL."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from refloop.domain.referral import PatientId
from refloop.store.imaging import ImagingStore
from tests.conftest import unique
from tests.helpers import wait_for
from tests.imaging import Modality, dicom_gateway, imaging_env, mpps_final, mpps_in_progress, persisted, started_for

NAME = "Müller^Jürgen"


async def create(env, attrs: Dataset, uid: str | None = None) -> tuple[int, Dataset, str]:
    """(status code, status, Affected SOP Instance UID in the response)"""
    status, affected = await asyncio.to_thread(env.modality.create, attrs, uid)
    return status.Status, status, affected


async def nset(env, uid: str, mods: Dataset) -> Dataset:
    status, _ = await asyncio.to_thread(env.modality.set, uid, mods)
    return status


async def test_completed_step_counts_series_and_instances(client, task_queue, store):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        _, booking = await env.book(rid, accession=acc)
        # No Affected SOP Instance UID in the request: the SCP assigns one and returns it.
        code, _, uid = await create(env, started_for(booking), None)
        assert code == 0x0000
        assert uid and ImagingStore(store.engine).get_mpps(uid).status == "IN PROGRESS"
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "in_progress")
        assert loop.procedure_steps[0].mpps_uid == uid
        assert (await nset(env, uid, mpps_final("COMPLETED", [3, 2]))).Status == 0x0000
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "acquired")
        step = loop.procedure_steps[0]
        assert (loop.stage.value, step.status, step.series_count, step.instance_count) == ("acquired", "completed", 2, 5)
        row = ImagingStore(store.engine).get_mpps(uid)
        assert (row.status, row.series_count, row.instance_count, row.referral_id) == ("COMPLETED", 2, 5, rid)


@pytest.mark.parametrize(
    "reason, stage, outcome",
    [
        ("110503", "not_performed", "not_performed"),  # allergic to contrast
        ("110507", "did_not_attend", "did_not_attend"),
        ("110510", "cancelled", "duplicate"),
        ("110514", "scheduled", None),  # wrong worklist entry: back on the worklist, operator flagged
    ],
)
async def test_discontinuation_reason_decides_the_outcome(client, task_queue, store, reason, stage, outcome):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        _, booking = await env.book(rid, accession=acc)
        uid = generate_uid()
        assert (await create(env, started_for(booking), uid))[0] == 0x0000
        await wait_for(client, rid, lambda lp: lp.stage.value == "in_progress")
        assert (await nset(env, uid, mpps_final("DISCONTINUED", [], reason))).Status == 0x0000
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == stage)
        assert loop.stage.value == stage and (loop.outcome.value if loop.outcome else None) == outcome
        assert loop.procedure_steps == [] or loop.procedure_steps[0].reason_code == reason
        if reason == "110503":
            assert "allergic" in loop.outcome_reason
        if reason == "110514":
            assert any(a.code == "wrong_worklist_entry" for a in loop.open_anomalies)
            await persisted(store, rid, lambda lp: lp.stage.value == "scheduled")
            query = Dataset()
            query.AccessionNumber = acc
            found, _ = await asyncio.to_thread(env.modality.find, query)
            assert len(found) == 1  # back on the modality's worklist for the right entry to be picked
        assert ImagingStore(store.engine).get_mpps(uid).reason_code == reason


async def test_protocol_errors_answer_with_status_and_comment(client, task_queue, store):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        _, booking = await env.book(rid, accession=acc)
        unknown = generate_uid()
        status = await nset(env, unknown, mpps_final("COMPLETED", [1]))
        assert status.Status == 0x0112 and status.ErrorComment
        wrong_start = started_for(booking)
        wrong_start.PerformedProcedureStepStatus = "COMPLETED"
        code, status, _ = await create(env, wrong_start, generate_uid())
        assert code == 0x0106 and "IN PROGRESS" in status.ErrorComment
        uid = generate_uid()
        assert (await create(env, started_for(booking), uid))[0] == 0x0000
        code, status, _ = await create(env, started_for(booking), uid)
        assert code == 0x0111 and status.ErrorComment
        bad = Dataset()
        bad.PerformedProcedureStepStatus = "HALFWAY"
        status = await nset(env, uid, bad)
        assert status.Status == 0x0106 and "HALFWAY" in status.ErrorComment
        assert (await nset(env, uid, mpps_final("COMPLETED", [2]))).Status == 0x0000
        for again in (mpps_final("COMPLETED", [2]), mpps_final("DISCONTINUED", [], "110503")):
            status = await nset(env, uid, again)
            assert status.Status == 0x0110 and "COMPLETED" in status.ErrorComment
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "acquired")
        assert loop.stage.value == "acquired"


async def test_nset_before_its_ncreate_is_parked_then_replayed(client, task_queue, store):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        _, booking = await env.book(rid, accession=acc)
        uid = generate_uid()
        progress = Dataset()
        progress.PerformedProcedureStepStatus = "IN PROGRESS"
        progress.PerformedSeriesSequence = mpps_final("IN PROGRESS", [4]).PerformedSeriesSequence
        for mods in (progress, mpps_final("COMPLETED", [4, 1])):
            status = await nset(env, uid, mods)
            assert status.Status == 0x0112 and "kept" in status.ErrorComment
        row = ImagingStore(store.engine).get_mpps(uid)
        assert row.status == "" and len(json.loads(row.pending_sets_json)) == 2
        assert (await create(env, started_for(booking), uid))[0] == 0x0000
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "acquired")
        assert loop.stage.value == "acquired" and loop.performed_instances == 5
        row = ImagingStore(store.engine).get_mpps(uid)
        assert (row.status, row.instance_count, row.pending_sets_json) == ("COMPLETED", 5, "[]")


async def test_mpps_state_survives_a_restart_of_the_scp(client, task_queue, store):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        _, booking = await env.book(rid, accession=acc)
        uid = generate_uid()
        assert (await create(env, started_for(booking), uid))[0] == 0x0000
        # A new SCP on the same database (the old one still runs: it shares nothing in memory).
        async with dicom_gateway(store, env.intake) as port:
            fresh = Modality(port)
            status, _ = await asyncio.to_thread(fresh.set, uid, mpps_final("COMPLETED", [7]))
            assert status.Status == 0x0000
            status, _ = await asyncio.to_thread(fresh.set, uid, mpps_final("COMPLETED", [7]))
            assert status.Status == 0x0110
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "acquired")
        assert loop.performed_instances == 7


async def test_two_mpps_for_one_study(client, task_queue, store):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        _, booking = await env.book(rid, accession=acc)
        first, second = generate_uid(), generate_uid()
        for uid in (first, second):
            assert (await create(env, started_for(booking), uid))[0] == 0x0000
        await wait_for(client, rid, lambda lp: len(lp.procedure_steps) == 2)
        assert (await nset(env, first, mpps_final("COMPLETED", [10]))).Status == 0x0000
        loop = await wait_for(client, rid, lambda lp: lp.procedure_steps[0].status == "completed")
        assert loop.stage.value == "in_progress"  # the other step is still running
        assert (await nset(env, second, mpps_final("COMPLETED", [3, 2]))).Status == 0x0000
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "acquired")
        assert loop.stage.value == "acquired" and loop.performed_instances == 15
        assert {s.mpps_uid for s in loop.procedure_steps} == {first, second}


async def test_latin1_name_from_the_modality_matches_the_utf8_order(client, task_queue, store):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        _, booking = await env.book(rid, accession=acc, name=NAME)
        uid = generate_uid()
        # Latin-1 on the wire, and no Issuer of Patient ID (modalities often leave it out).
        attrs = started_for(booking, name=NAME, charset="ISO_IR 100", issuer="")
        assert "ISO_IR 100" == attrs.SpecificCharacterSet
        assert (await create(env, attrs, uid))[0] == 0x0000
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "in_progress")
        assert loop.stage.value == "in_progress" and loop.referral.patient.name == NAME
        assert not any(a.code == "patient_mismatch" for a in loop.anomalies)
        kept = Dataset.from_json(ImagingStore(store.engine).get_mpps(uid).attributes_json)
        assert str(kept.PatientName) == NAME


async def test_other_procedure_or_patient_is_a_discrepancy_that_travels_with_the_result(client, task_queue, store):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        _, booking = await env.book(rid, accession=acc, code="CTHEAD")
        attrs = started_for(booking, code="CTCHEST", patient_id="PID_9")
        assert (await create(env, attrs, generate_uid()))[0] == 0x0000
        loop = await wait_for(client, rid, lambda lp: len(lp.anomalies) == 2)
        found = {a.code: a for a in loop.anomalies}
        assert set(found) == {"procedure_mismatch", "patient_mismatch"}
        assert all(a.travels_with_result and not a.resolved for a in found.values())
        assert "CTCHEST" in found["procedure_mismatch"].detail and "CTHEAD" in found["procedure_mismatch"].detail
        assert loop.needs_attention
        entry = next(t for t in loop.timeline if t.kind == "procedure_started")
        assert "procedure_mismatch" in entry.note and "patient_mismatch" in entry.note
        # The read model flags the loop for operators too.
        assert await persisted(store, rid, lambda lp: lp.needs_attention)


async def test_correlation_by_step_keys_then_patient_and_accession(client, task_queue, store):
    """One accession, two requested procedures: the SPS ID picks one; with only the accession,
    the patient does."""
    p = unique("P")
    acc = unique("ACC")
    other = PatientId(value="PID_2", issuer="ADT1")
    async with imaging_env(client, task_queue, store) as env:
        await env.book(f"{p}-a", accession=acc, sps_id=f"{p}-SPS-A")
        await env.book(f"{p}-b", accession=acc, sps_id=f"{p}-SPS-B", patient=other)
        by_sps = mpps_in_progress(accession=acc, sps_id=f"{p}-SPS-A")
        assert (await create(env, by_sps, generate_uid()))[0] == 0x0000
        by_patient = mpps_in_progress(accession=acc, patient_id="PID_2", issuer="ADT1")
        assert (await create(env, by_patient, generate_uid()))[0] == 0x0000
        a = await wait_for(client, f"{p}-a", lambda lp: lp.stage.value == "in_progress")
        b = await wait_for(client, f"{p}-b", lambda lp: lp.stage.value == "in_progress")
        assert len(a.procedure_steps) == 1 and len(b.procedure_steps) == 1


async def test_mpps_before_its_order_is_parked_then_released(client, task_queue, store):
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        uid = generate_uid()
        assert (await create(env, mpps_in_progress(accession=acc), uid))[0] == 0x0000
        row = ImagingStore(store.engine).get_mpps(uid)
        assert row.status == "IN PROGRESS" and row.referral_id == ""
        assert (await nset(env, uid, mpps_final("COMPLETED", [2]))).Status == 0x0000
        await env.book(rid, accession=acc, expect="acquired")  # the parked steps are released at once
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "acquired")
        assert loop.stage.value == "acquired" and loop.performed_instances == 2
