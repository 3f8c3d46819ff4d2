"""Our Modality Worklist SCP with real peers (DCMTK findscu, a pynetdicom modality), over loops
driven through the Intake on a real Temporal server."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from pydicom import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from refloop.domain import events as ev
from refloop.domain.referral import PatientId
from tests.conftest import unique
from tests.imaging import AET, Modality, dicom_gateway, findscu, hand_over, imaging_env, imaging_order, mpps_in_progress, persisted

NAME = "Müller^Jürgen"


def mwl_query(charset: str = "", **top) -> Dataset:
    q = Dataset()
    if charset:
        q.SpecificCharacterSet = charset  # first, so the name below is encoded in it
    q.PatientName = ""
    q.AccessionNumber = ""
    for k, v in top.items():
        setattr(q, k, v)
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledStationAETitle = ""
    sps.ScheduledProcedureStepStatus = ""
    q.ScheduledProcedureStepSequence = Sequence([sps])
    return q


async def test_accented_name_comes_back_intact_in_latin1_and_utf8(client, task_queue, store):
    acc = unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        await env.book(unique(), accession=acc, name=NAME)
        for charset in ("ISO_IR 100", "ISO_IR 192"):
            found, final = await asyncio.to_thread(env.modality.find, mwl_query(charset, PatientName="MÜLLER*", AccessionNumber=acc))
            assert final.Status == 0x0000 and len(found) == 1, charset
            assert found[0].SpecificCharacterSet == charset
            assert str(found[0].PatientName) == NAME
        # DCMTK as the peer: UTF-8 and Latin-1 query values, and no character set at all.
        utf8 = await findscu(env.port, AET, keys=["SpecificCharacterSet=ISO_IR 192", "PatientName=Müller*", f"AccessionNumber={acc}"])
        latin1 = await findscu(env.port, AET, keys=["SpecificCharacterSet=ISO_IR 100", "PatientName=M\xfcller*".encode("latin-1"), f"AccessionNumber={acc}"])
        undeclared = await findscu(env.port, AET, keys=["PatientName", f"AccessionNumber={acc}"])
        assert [(r.SpecificCharacterSet, str(r.PatientName)) for r in utf8] == [("ISO_IR 192", NAME)]
        assert [(r.SpecificCharacterSet, str(r.PatientName)) for r in latin1] == [("ISO_IR 100", NAME)]
        assert [(r.SpecificCharacterSet, str(r.PatientName)) for r in undeclared] == [("ISO_IR 192", NAME)]


async def test_scheduled_and_arrived_loops_are_listed_others_not(client, task_queue, store):
    p = unique("W")
    async with imaging_env(client, task_queue, store) as env:
        await env.book(f"{p}-a", accession=f"{p}-1")
        await env.book(f"{p}-b", accession=f"{p}-2", patient=PatientId(value="P2", issuer="ADT1"))
        await hand_over(env.intake, f"{p}-b", ev.Arrived(event_id=f"{p}-b-arr", occurred_at=datetime.now(timezone.utc), patient=PatientId(value="P2", issuer="ADT1")))
        await env.book(f"{p}-c", accession=f"{p}-3")
        await hand_over(env.intake, f"{p}-c", ev.ReferralCancelled(event_id=f"{p}-c-ca", occurred_at=datetime.now(timezone.utc), reason="requester"))
        ordered_only, _ = imaging_order(f"{p}-d", accession=f"{p}-4")
        await hand_over(env.intake, f"{p}-d", ordered_only)
        await persisted(env.store, f"{p}-b", lambda lp: lp.stage.value == "arrived")
        await persisted(env.store, f"{p}-c", lambda lp: lp.stage.value == "cancelled")
        await persisted(env.store, f"{p}-d", lambda lp: lp.stage.value == "ordered")
        found, _ = await asyncio.to_thread(env.modality.find, mwl_query(AccessionNumber=f"{p}-*"))
        listed = sorted((str(r.AccessionNumber), r.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus) for r in found)
        assert listed == [(f"{p}-1", "SCHEDULED"), (f"{p}-2", "ARRIVED")]


async def test_item_leaves_the_worklist_once_its_mpps_starts_unless_configured(client, task_queue, store):
    acc = unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        o, b = await env.book(unique(), accession=acc)
        q = mwl_query(AccessionNumber=acc)
        assert len((await asyncio.to_thread(env.modality.find, q))[0]) == 1
        attrs = mpps_in_progress(accession=acc, sps_id=b.identifiers.sps_id, study_uid=b.identifiers.study_instance_uid)
        status, _ = await asyncio.to_thread(env.modality.create, attrs, None)
        assert status.Status == 0x0000
        # Gone at once: the SCP's own MPPS record says so before the loop's state is persisted.
        assert (await asyncio.to_thread(env.modality.find, q))[0] == []
        async with dicom_gateway(store, env.intake, keep_started=True) as keeping:
            await persisted(store, o.placer_order_number, lambda lp: lp.stage.value == "in_progress")
            found, _ = await asyncio.to_thread(Modality(keeping).find, q)
            assert [r.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus for r in found] == ["STARTED"]


async def test_bad_key_value_is_refused_with_a_comment_and_the_listener_lives_on(client, task_queue, store):
    acc = unique("ACC")
    async with imaging_env(client, task_queue, store) as env:
        await env.book(unique(), accession=acc)
        bad = mwl_query(AccessionNumber=acc)
        bad.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "2026-03-05"
        found, final = await asyncio.to_thread(env.modality.find, bad)
        assert found == [] and final.Status == 0xC000 and "DA" in final.ErrorComment
        found, final = await asyncio.to_thread(env.modality.find, mwl_query(AccessionNumber=acc))
        assert final.Status == 0x0000 and len(found) == 1


async def test_a_modality_calling_another_ae_title_is_rejected(client, task_queue, store):
    async with imaging_env(client, task_queue, store) as env:
        ae = AE(ae_title="CT1")
        ae.add_requested_context(ModalityWorklistInformationFind)
        assoc = await asyncio.to_thread(ae.associate, "127.0.0.1", env.port, ae_title="NOT-REFLOOP")
        assert assoc.is_rejected
