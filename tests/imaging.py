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
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import CTImageStorage

from refloop.domain import events as ev
from refloop.domain.loop import Loop
from refloop.domain.referral import Appointment, Identifiers, Patient, PatientId, Requester, ServicePlan
from refloop.demo.modality import AET, MODALITY_AET, Modality, mpps_final, mpps_in_progress, performed_series  # noqa: F401 (shared)
from refloop.gateways.dicom.server import DicomGateway
from refloop.gateways.intake import Inbound, Intake, Keys, Result
from refloop.store.repo import Store


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


# --- a pynetdicom modality (MWL and MPPS SCU): shared with `refloop demo` -------------------

def started_for(booking, **kw) -> Dataset:
    ids = booking.identifiers
    return mpps_in_progress(accession=ids.accession_number, sps_id=ids.sps_id, study_uid=ids.study_instance_uid, rp_id=ids.requested_procedure_id, **kw)


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
