"""Helpers for the imaging tests: booking loops through the Intake, real DICOM peers
(DCMTK findscu/storescu/wlmscpfs, a pynetdicom modality), a real Orthanc on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, ModalityPerformedProcedureStep, ModalityWorklistInformationFind

from refloop.domain import events as ev
from refloop.domain.loop import Loop
from refloop.domain.referral import Appointment, Identifiers, Patient, PatientId, Requester, ServicePlan
from refloop.gateways.dicom.server import DicomGateway
from refloop.gateways.intake import Inbound, Intake, Keys, Result
from refloop.store.repo import Store

AET = "REFLOOP"
MODALITY_AET = "CT1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- loops ---------------------------------------------------------------------------------


def imaging_order(
    rid: str,
    *,
    accession: str,
    name: str = "Smith^Lucy",
    patient: PatientId = PatientId(value="PID_1", issuer="ADT1"),
    code: str = "CTHEAD",
    display: str = "CT head",
    modality: str = "CT",
    priority: str = "routine",
    start: datetime | None = None,
    station_aet: list[str] | None = None,
    study_uid: str = "",
    sps_id: str = "",
    endpoint: str = "",
) -> tuple[ev.OrderPlaced, ev.Scheduled]:
    now = datetime.now(timezone.utc)
    ids = Identifiers(accession_number=accession, sps_id=sps_id or f"SPS-{accession}", requested_procedure_id=f"RP-{accession}", study_instance_uid=study_uid or generate_uid())
    order = ev.OrderPlaced(
        event_id=f"{rid}-order",
        occurred_at=now,
        source="test-ris",
        placer_order_number=rid,
        patient=Patient(id=patient, name=name, birth_date="19700101", sex="F"),
        requester=Requester(practitioner="Who^Doctor", endpoint=endpoint),
        service=ServicePlan(procedure_code=code, procedure_system="http://loinc.org", procedure_display=display, modality=modality, priority=priority),  # type: ignore[arg-type]
        identifiers=ids,
    )
    booking = ev.Scheduled(
        event_id=f"{rid}-booking",
        occurred_at=now,
        source="test-ris",
        appointment=Appointment(start=start or now + timedelta(hours=1), station_aet=station_aet or [MODALITY_AET], station_name="CT-ROOM-1", location="RAD"),
        identifiers=ids,
        patient=patient,
    )
    return order, booking


async def hand_over(intake: Intake, rid: str, *events: ev.EventBase, sender: str = "test-ris") -> list[Result]:
    """Typed events through the Intake, as a gateway would (placer order number as the key)."""
    out = []
    for e in events:
        out.append(await intake.receive(Inbound("json", sender, e.event_id, e.kind, e.model_dump_json(), e, Keys(placer_order_number=rid))))  # type: ignore[attr-defined]
    return out


async def persisted(store: Store, rid: str, predicate, timeout: float = 20.0) -> Loop | None:
    """The loop as the SQL read model has it, once predicate holds (None if it never does)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        loop = await asyncio.to_thread(store.get_loop, rid)
        if loop is not None and predicate(loop):
            return loop
        await asyncio.sleep(0.1)
    return None


@asynccontextmanager
async def dicom_gateway(store: Store, intake: Intake, **options):
    gateway = DicomGateway(store, intake, ae_title=AET, port=0, **options)
    port = gateway.start()
    try:
        yield port
    finally:
        await asyncio.to_thread(gateway.stop)


# --- DCMTK peers ---------------------------------------------------------------------------


async def run(*cmd: str | bytes, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode or 0, out, err)


async def findscu(port: int, called: str, query: Path | None = None, keys: list[str | bytes] = (), calling: str = MODALITY_AET) -> list[Dataset]:
    """DCMTK findscu -W as the modality; the responses it received, as datasets."""
    out = Path(tempfile.mkdtemp(prefix="findscu-"))
    try:
        cmd: list[str | bytes] = ["findscu", "-W", "-aet", calling, "-aec", called, "-X", "-od", str(out)]
        for k in keys:
            cmd += ["-k", k]
        cmd += ["127.0.0.1", str(port)]
        if query is not None:
            cmd.append(str(query))
        done = await run(*cmd)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return [dcmread(f) for f in sorted(out.glob("rsp*.dcm"))]
    finally:
        shutil.rmtree(out, ignore_errors=True)


async def dump2dcm(dump: Path, target: Path, *options: str) -> Path:
    done = await run("dump2dcm", *options, str(dump), str(target))
    assert done.returncode == 0, done.stderr.decode()
    return target


@asynccontextmanager
async def wlmscpfs(worklist_files: list[Path], called: str = "OFFIS"):
    """DCMTK's own worklist server over the same items, on a free loopback port."""
    root = Path(tempfile.mkdtemp(prefix="wlmscpfs-"))
    (root / called).mkdir()
    (root / called / "lockfile").touch()
    for f in worklist_files:
        shutil.copy(f, root / called / f.name)
    port = free_port()
    proc = await asyncio.create_subprocess_exec("wlmscpfs", "-dfp", str(root), str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                await asyncio.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(root, ignore_errors=True)


# --- a pynetdicom modality (MWL and MPPS SCU) ------------------------------------------------


class Modality:
    """Blocking pynetdicom SCU; call its methods through asyncio.to_thread."""

    def __init__(self, port: int, called: str = AET, calling: str = MODALITY_AET):
        self.ae = AE(ae_title=calling)
        self.ae.add_requested_context(ModalityPerformedProcedureStep)
        self.ae.add_requested_context(ModalityWorklistInformationFind)
        self.port, self.called = port, called

    def _assoc(self):
        assoc = self.ae.associate("127.0.0.1", self.port, ae_title=self.called)
        assert assoc.is_established, "association rejected"
        return assoc

    def find(self, query: Dataset) -> tuple[list[Dataset], Dataset]:
        assoc = self._assoc()
        try:
            found, final = [], None
            for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
                if status and status.Status in (0xFF00, 0xFF01):
                    found.append(identifier)
                else:
                    final = status
            return found, final
        finally:
            assoc.release()

    def create(self, attrs: Dataset, uid: str | None) -> tuple[Dataset, str]:
        """N-CREATE; returns the status and the Affected SOP Instance UID of the response."""
        seen: list[str] = []

        def on_recv(event) -> None:  # pynetdicom's SCU API drops the response's instance UID
            uid_in_rsp = event.message.command_set.get("AffectedSOPInstanceUID")
            if uid_in_rsp:
                seen.append(str(uid_in_rsp))

        assoc = self.ae.associate("127.0.0.1", self.port, ae_title=self.called, evt_handlers=[(evt.EVT_DIMSE_RECV, on_recv)])
        assert assoc.is_established, "association rejected"
        try:
            status, _ = assoc.send_n_create(attrs, ModalityPerformedProcedureStep, uid)
            return status, (seen[-1] if seen else "")
        finally:
            assoc.release()

    def set(self, uid: str, mods: Dataset) -> tuple[Dataset, Dataset | None]:
        assoc = self._assoc()
        try:
            return assoc.send_n_set(mods, ModalityPerformedProcedureStep, uid)
        finally:
            assoc.release()


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def mpps_in_progress(
    *,
    accession: str = "",
    sps_id: str = "",
    study_uid: str = "",
    rp_id: str = "",
    patient_id: str = "PID_1",
    issuer: str = "ADT1",
    name: str = "Smith^Lucy",
    code: str = "CTHEAD",
    charset: str = "ISO_IR 192",
) -> Dataset:
    """An N-CREATE attribute list (PS3.3 C.4.13-17), minimal but complete."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset  # first: pydicom encodes names with the set present when assigned
    ssa = Dataset()
    ssa.AccessionNumber = accession
    ssa.ScheduledProcedureStepID = sps_id
    ssa.StudyInstanceUID = study_uid
    ssa.RequestedProcedureID = rp_id
    ssa.ScheduledProcedureStepDescription = ""
    ssa.ScheduledProtocolCodeSequence = Sequence([])
    ds.ScheduledStepAttributesSequence = Sequence([ssa])
    ds.PatientName = name
    ds.PatientID = patient_id
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = MODALITY_AET
    ds.PerformedStationName = "CT-ROOM-1"
    ds.PerformedLocation = "RAD"
    now = datetime.now(timezone.utc)
    ds.PerformedProcedureStepStartDate = now.strftime("%Y%m%d")
    ds.PerformedProcedureStepStartTime = now.strftime("%H%M%S")
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence([_code(code, "LN", code)] if code else [])
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = Sequence([])
    ds.PerformedSeriesSequence = Sequence([])
    return ds


def performed_series(images_per_series: list[int]) -> Sequence:
    out = []
    for n in images_per_series:
        s = Dataset()
        s.PerformingPhysicianName = ""
        s.ProtocolName = "HEAD"
        s.OperatorsName = ""
        s.SeriesInstanceUID = generate_uid()
        s.SeriesDescription = ""
        s.RetrieveAETitle = ""
        refs = []
        for _ in range(n):
            r = Dataset()
            r.ReferencedSOPClassUID = CTImageStorage
            r.ReferencedSOPInstanceUID = generate_uid()
            refs.append(r)
        s.ReferencedImageSequence = Sequence(refs)
        s.ReferencedNonImageCompositeSOPInstanceSequence = Sequence([])
        out.append(s)
    return Sequence(out)


def started_for(booking, **kw) -> Dataset:
    ids = booking.identifiers
    return mpps_in_progress(accession=ids.accession_number, sps_id=ids.sps_id, study_uid=ids.study_instance_uid, rp_id=ids.requested_procedure_id, **kw)


def mpps_final(status: str, images_per_series: list[int] = (), reason: str = "") -> Dataset:
    """An N-SET modification list that ends the step."""
    ds = Dataset()
    now = datetime.now(timezone.utc)
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = now.strftime("%Y%m%d")
    ds.PerformedProcedureStepEndTime = now.strftime("%H%M%S")
    ds.PerformedSeriesSequence = performed_series(list(images_per_series))
    if reason:
        from refloop.domain.codes import CID_9300

        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence([_code(reason, "DCM", CID_9300[reason])])
    return ds


# --- generated DICOM and a real Orthanc ------------------------------------------------------


def write_study(folder: Path, *, study_uid: str, accession: str, patient_id: str = "PID_1", count: int = 3) -> list[Path]:
    """Small valid CT images (8x8, 16 bit) of one study, as DICOM files."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    files = []
    for i in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.AccessionNumber, ds.PatientID, ds.PatientName = accession, patient_id, "Test^Patient"
        ds.Modality, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "CT", "1", 1, i + 1
        now = datetime.now(timezone.utc)
        ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = bytes(range(128))
        path = folder / f"img{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


class Orthanc:
    """A real Orthanc (Debian package) on free loopback ports, with its own storage."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "refloop-test",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StableAge": 2,
            "Plugins": [],
        }))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen(["Orthanc", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (self.root / "orthanc.log").read_text()[-2000:]
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    async def store(self, files: list[Path]) -> None:
        done = await run("storescu", "-aet", MODALITY_AET, "-aec", "ORTHANC", "127.0.0.1", str(self.dicom_port), *map(str, files))
        assert done.returncode == 0, done.stderr.decode()


# --- one test's imaging stack: worker, Intake, DICOM gateway ----------------------------------


class Env:
    def __init__(self, client, store: Store, intake: Intake, port: int):
        self.client, self.store, self.intake, self.port = client, store, intake, port
        self.modality = Modality(port)

    async def book(self, rid: str, expect: str = "scheduled", **order) -> tuple[ev.OrderPlaced, ev.Scheduled]:
        """Order + booking through the Intake; returns once the read model has the loop there."""
        o, b = imaging_order(rid, **order)
        assert all(r.positive for r in await hand_over(self.intake, rid, o, b))
        assert await persisted(self.store, rid, lambda lp: lp.stage.value == expect), f"{rid} never {expect}"
        return o, b


@asynccontextmanager
async def imaging_env(client, task_queue: str, store: Store, policy=None, **gateway_options):
    from refloop.config import Settings
    from workers.main import build_worker

    intake = Intake(client, store, task_queue, policy)
    async with build_worker(client, Settings(task_queue=task_queue), store):
        async with dicom_gateway(store, intake, **gateway_options) as port:
            yield Env(client, store, intake, port)


@pytest.fixture
def orthanc(tmp_path):
    """A fresh Orthanc for one test (import this fixture into the test module)."""
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    yield server
    server.stop()


@asynccontextmanager
async def watching(orthanc: Orthanc, intake):
    """The archive watcher following `orthanc` in the background (its task as `.task`)."""
    from refloop.gateways.orthanc import ArchiveWatcher

    stop = asyncio.Event()
    watcher = ArchiveWatcher(orthanc.url, intake, poll_seconds=0.3)
    task = asyncio.create_task(watcher.run(stop))
    watcher.task = task  # type: ignore[attr-defined]
    try:
        yield watcher
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
