"""The whole imaging loop with every system speaking its own protocol: HL7 v2 order, booking,
arrival and report over MLLP; the modality's worklist query (DCMTK findscu) and MPPS (pynetdicom);
images through DCMTK storescu into a real Orthanc; the result out as a FHIR DiagnosticReport to
the requester, whose acknowledgment comes over the HTTP API. The loop closes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import httpx

from refloop.domain.loop import Outcome, Stage
from refloop.gateways.hl7.receiver import Hl7Receiver
from refloop.gateways.hl7.server import MllpServer
from refloop.gateways.http import create_app
from refloop.gateways.http.server import EXTRA_ROUTERS, load_routers
from refloop.gateways.intake import Intake
from refloop.store.db import make_engine
from refloop.store.repo import Store
from tests.conftest import unique
from tests.helpers import wait_for
from tests.hl7kit import ack_code, isolated_client, send
from tests.http_support import TOKENS, serving, settings_for
from tests.imaging import AET, MODALITY_AET, Modality, dicom_gateway, findscu, mpps_final, mpps_in_progress, orthanc, watching, write_study  # noqa: F401 (fixture)
from tests.receivers import FhirReceiver
from tests.test_hl7_scenarios import arrival, booking, order, report
from workers.main import build_worker


async def test_imaging_loop_over_hl7_dicom_orthanc_and_fhir_closes(temporal_env, tmp_path, orthanc):
    client = await isolated_client(temporal_env)
    store = Store(make_engine(f"sqlite:///{tmp_path / 'refloop.db'}"))
    task_queue = f"tq-{uuid.uuid4()}"
    settings = settings_for(task_queue)
    intake = Intake(client, store, task_queue)
    po = unique()
    start = datetime.now(timezone.utc) + timedelta(hours=1)
    async with FhirReceiver() as requester:
        # Results of orders placed by MESA_OF (the sample's MSH-3) go to this FHIR endpoint.
        mllp = MllpServer(Hl7Receiver(intake, requester_endpoints={"MESA_OF": requester.base}))
        hl7_port = await mllp.start("127.0.0.1", 0)
        app = create_app(intake, store, settings, routers=load_routers(EXTRA_ROUTERS))
        try:
            async with build_worker(client, settings, store), dicom_gateway(store, intake) as dicom_port, serving(app) as api, watching(orthanc, intake):
                # HL7: the order (OMI^O23 with IPC: accession, study UID, SPS, station CT1), its booking, the arrival.
                omi = order(po, **{"IPC.F9": MODALITY_AET, "TQ1.F7": f"{start:%Y%m%d%H%M%S}+0000"})
                assert ack_code(await send(hl7_port, omi)) == "AA"
                assert ack_code(await send(hl7_port, booking(po, start=f"{start:%Y%m%d%H%M%S}+0000"))) == "AA"
                await wait_for(client, po, lambda lp: lp.stage == Stage.SCHEDULED)
                assert ack_code(await send(hl7_port, arrival("PID_1^^^ADT1", f"A-{po}"))) == "AA"
                await wait_for(client, po, lambda lp: lp.stage == Stage.ARRIVED)

                # DICOM: CT1 asks for today's and tomorrow's work.
                days = f"{start:%Y%m%d}-{start + timedelta(days=1):%Y%m%d}"
                sps = "ScheduledProcedureStepSequence[0]"
                for _ in range(50):  # the read model follows the workflow
                    items = await findscu(dicom_port, AET, keys=[
                        f"{sps}.ScheduledStationAETitle={MODALITY_AET}", f"{sps}.ScheduledProcedureStepStartDate={days}",
                        f"{sps}.ScheduledProcedureStepID", f"{sps}.ScheduledProcedureStepStatus", "AccessionNumber",
                        "StudyInstanceUID", "RequestedProcedureID", "PatientID", "IssuerOfPatientID", "PatientName",
                    ])
                    if items and items[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "ARRIVED":
                        break
                    await asyncio.sleep(0.1)
                [item] = items
                # PID-5 "Smith^Lucy^Mark": the HL7 gateway keeps family^given.
                assert (item.AccessionNumber, item.PatientID, item.IssuerOfPatientID, str(item.PatientName)) == (f"ACC-{po}", "PID_1", "ADT1", "Smith^Lucy")
                step = item.ScheduledProcedureStepSequence[0]
                attrs = mpps_in_progress(
                    accession=item.AccessionNumber, sps_id=step.ScheduledProcedureStepID, study_uid=item.StudyInstanceUID,
                    rp_id=item.RequestedProcedureID, patient_id=item.PatientID, issuer=item.IssuerOfPatientID,
                    name=str(item.PatientName), code="10637-7",
                )
                modality = Modality(dicom_port)
                status, mpps_uid = await asyncio.to_thread(modality.create, attrs, None)
                assert status.Status == 0
                status, _ = await asyncio.to_thread(modality.set, mpps_uid, mpps_final("COMPLETED", [2, 1]))
                assert status.Status == 0

                # Orthanc: the images arrive, the watcher sees the stable study.
                await orthanc.store(write_study(tmp_path / "study", study_uid=item.StudyInstanceUID, accession=item.AccessionNumber, count=3))
                loop = await wait_for(client, po, lambda lp: lp.stage == Stage.ARCHIVED, timeout=30)
                assert loop.archived_instances == loop.performed_instances == 3 and not loop.open_anomalies
                async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {TOKENS['reporting']}"}) as reading:
                    listed = (await reading.get("/worklist/reporting")).json()
                assert [i["accession_number"] for i in listed] == [f"ACC-{po}"]

                # HL7: the final report; FHIR out; the requester acknowledges over HTTP.
                assert ack_code(await send(hl7_port, report(po, "F", control=f"R-{po}", study=item.StudyInstanceUID))) == "AA"
                await wait_for(client, po, lambda lp: lp.stage == Stage.DELIVERED, timeout=30)
                [delivered] = requester.accepted("DiagnosticReport")
                assert delivered["status"] == "final"
                assert [s["identifier"]["value"] for s in delivered["imagingStudy"]] == [f"urn:oid:{item.StudyInstanceUID}"]
                async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {TOKENS['ehr']}"}) as ehr:
                    assert (await ehr.post(f"/referrals/{po}/acknowledgment", json={"by": "Dr Who"})).status_code == 202
                loop = await wait_for(client, po, lambda lp: lp.stage == Stage.CLOSED)
                assert (loop.stage, loop.outcome) == (Stage.CLOSED, Outcome.COMPLETED)
                sources = {t.kind: t.source for t in loop.timeline if t.applied}
                assert sources["procedure_started"] == f"dicom:{MODALITY_AET}" and sources["study_archived"] == "orthanc"
        finally:
            await mllp.stop()
