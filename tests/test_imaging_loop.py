"""A whole imaging loop through real peers: order -> MWL query (DCMTK findscu) -> MPPS (pynetdicom
modality) -> images to a real Orthanc (DCMTK storescu) -> archive watcher -> reporting worklist
-> report -> delivery to the requester -> acknowledgment -> closed.

Order, arrival, report and acknowledgment enter as typed events through the Intake here (what
the HL7/FHIR gateways produce); the result goes out as the FHIR DiagnosticReport the requester
receives.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from pydicom.uid import generate_uid

from refloop.domain import events as ev
from refloop.domain.policy import Policy
from refloop.domain.referral import PatientId
from refloop.gateways.worklist import reading_worklist
from refloop.store.imaging import ImagingStore
from tests.conftest import unique
from tests.helpers import wait_for
from tests.imaging import AET, MODALITY_AET, findscu, hand_over, imaging_env, mpps_final, mpps_in_progress, orthanc, started_for, watching, write_study  # noqa: F401 (fixture)
from tests.receivers import FhirReceiver



async def test_a_full_imaging_loop_closes(client, task_queue, store, orthanc, tmp_path):
    rid, acc = unique(), unique("ACC")
    patient = PatientId(value="PID_42", issuer="ADT1")
    async with imaging_env(client, task_queue, store) as env, FhirReceiver() as requester, watching(orthanc, env.intake):
        await env.book(rid, accession=acc, patient=patient, name="Doe^Jane", endpoint=requester.base)
        await hand_over(env.intake, rid, ev.Arrived(event_id=f"{rid}-arrived", occurred_at=datetime.now(timezone.utc), patient=patient))

        # The modality asks for its worklist the way CT1 would: its station AE and today.
        today = datetime.now(timezone.utc)
        days = f"{today:%Y%m%d}-{today + timedelta(days=1):%Y%m%d}"  # booked an hour ahead
        sps = "ScheduledProcedureStepSequence[0]"
        items = await findscu(env.port, AET, keys=[
            f"{sps}.ScheduledStationAETitle={MODALITY_AET}", f"{sps}.ScheduledProcedureStepStartDate={days}",
            f"{sps}.ScheduledProcedureStepID", f"{sps}.Modality", "AccessionNumber", "StudyInstanceUID",
            "RequestedProcedureID", "PatientID", "IssuerOfPatientID", "PatientName",
        ])
        mine = [i for i in items if i.AccessionNumber == acc]
        assert len(mine) == 1
        item = mine[0]
        assert (str(item.PatientName), item.PatientID, item.IssuerOfPatientID) == ("Doe^Jane", "PID_42", "ADT1")

        # It performs the step it picked, copying the worklist's keys into the MPPS.
        step = item.ScheduledProcedureStepSequence[0]
        attrs = mpps_in_progress(
            accession=item.AccessionNumber, sps_id=step.ScheduledProcedureStepID, study_uid=item.StudyInstanceUID,
            rp_id=item.RequestedProcedureID, patient_id=item.PatientID, issuer=item.IssuerOfPatientID, name=str(item.PatientName),
        )
        status, mpps_uid = await asyncio.to_thread(env.modality.create, attrs, None)
        assert status.Status == 0 and mpps_uid
        await wait_for(client, rid, lambda lp: lp.stage.value == "in_progress")
        status, _ = await asyncio.to_thread(env.modality.set, mpps_uid, mpps_final("COMPLETED", [3]))
        assert status.Status == 0

        # Images to the archive; the watcher sees the stable study.
        await orthanc.store(write_study(tmp_path / "study", study_uid=item.StudyInstanceUID, accession=acc, patient_id="PID_42", count=3))
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "archived", timeout=30)
        assert loop.archived_instances == loop.performed_instances == 3 and not loop.open_anomalies

        for _ in range(50):  # the read model follows the workflow
            worklist = reading_worklist(ImagingStore(store.engine), Policy())
            if any(i.referral_id == rid for i in worklist):
                break
            await asyncio.sleep(0.1)
        assert [i.accession_number for i in worklist if i.referral_id == rid] == [acc]

        now = datetime.now(timezone.utc)
        await hand_over(env.intake, rid, ev.ReportIssued(event_id=f"{rid}-final", occurred_at=now, status="final", report_id="R1", conclusion="No acute findings."))
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "delivered", timeout=30)
        assert loop.stage.value == "delivered"
        [report] = requester.accepted("DiagnosticReport")
        assert (report["status"], report["conclusion"]) == ("final", "No acute findings.")
        assert [s["identifier"]["value"] for s in report["imagingStudy"]] == [f"urn:oid:{item.StudyInstanceUID}"]
        assert report["subject"]["identifier"]["value"] == "PID_42"
        await hand_over(env.intake, rid, ev.ResultAcknowledged(event_id=f"{rid}-ack", occurred_at=datetime.now(timezone.utc), by="Dr Who"))
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "closed")
        assert (loop.stage.value, loop.outcome.value) == ("closed", "completed")
        applied = [t.kind for t in loop.timeline if t.applied]
        assert applied[:5] == ["order_placed", "scheduled", "arrived", "procedure_started", "procedure_completed"]
        assert {"study_archived", "report_issued", "result_delivered", "result_acknowledged"} <= set(applied)


async def test_a_discrepancy_from_the_modality_reaches_the_requester_with_the_result(client, task_queue, store):
    """MPPS reports another procedure than booked: flagged on the loop, and the delivered
    DiagnosticReport carries it (extension and conclusion)."""
    rid, acc = unique(), unique("ACC")
    async with imaging_env(client, task_queue, store) as env, FhirReceiver() as requester:
        _, booking = await env.book(rid, accession=acc, code="CTHEAD", endpoint=requester.base)
        uid = generate_uid()
        status, _ = await asyncio.to_thread(env.modality.create, started_for(booking, code="CTCHEST"), uid)
        assert status.Status == 0
        status, _ = await asyncio.to_thread(env.modality.set, uid, mpps_final("COMPLETED", [2]))
        assert status.Status == 0
        now = datetime.now(timezone.utc)
        await hand_over(
            env.intake, rid,
            ev.StudyArchived(event_id=f"{rid}-study", occurred_at=now, accession_number=acc, instance_count=2),
            ev.ReportIssued(event_id=f"{rid}-final", occurred_at=now, status="final", conclusion="Normal chest."),
        )
        loop = await wait_for(client, rid, lambda lp: lp.stage.value == "delivered", timeout=30)
        assert loop.needs_attention and [a.code for a in loop.open_anomalies] == ["procedure_mismatch"]
        [report] = requester.accepted("DiagnosticReport")
        travelled = [e["valueString"] for e in report.get("extension", []) if "discrepancy" in e["url"]]
        assert len(travelled) == 1 and "CTCHEST" in travelled[0] and "CTHEAD" in travelled[0]
        assert "CTCHEST" in report["conclusion"]
