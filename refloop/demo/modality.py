"""A modality as pynetdicom SCU: Modality Worklist query (C-FIND) and MPPS (N-CREATE / N-SET),
with the MPPS attribute lists a modality sends (PS3.3 C.4.13-17). Used by the demo and the tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, ModalityPerformedProcedureStep, ModalityWorklistInformationFind, Verification

from refloop.domain.codes import CID_9300

AET = "REFLOOP"
MODALITY_AET = "CT1"
PENDING = (0xFF00, 0xFF01)


class AssociationRejected(ConnectionError):
    pass


class Modality:
    """Blocking pynetdicom SCU; call its methods through asyncio.to_thread."""

    def __init__(self, port: int, called: str = AET, calling: str = MODALITY_AET, host: str = "127.0.0.1"):
        self.ae = AE(ae_title=calling)
        for context in (ModalityPerformedProcedureStep, ModalityWorklistInformationFind, Verification):
            self.ae.add_requested_context(context)
        self.host, self.port, self.called = host, port, called

    def _assoc(self, handlers=None):
        assoc = self.ae.associate(self.host, self.port, ae_title=self.called, evt_handlers=handlers or [])
        if not assoc.is_established:
            raise AssociationRejected(f"association rejected by {self.called}@{self.host}:{self.port}")
        return assoc

    def echo(self) -> int:
        assoc = self._assoc()
        try:
            return int(assoc.send_c_echo().Status)
        finally:
            assoc.release()

    def find(self, query: Dataset) -> tuple[list[Dataset], Dataset]:
        """The worklist items matching `query`, and the final status."""
        assoc = self._assoc()
        try:
            found, final = [], None
            for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
                if status and status.Status in PENDING:
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

        assoc = self._assoc([(evt.EVT_DIMSE_RECV, on_recv)])
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


def coded(value: str, scheme: str, meaning: str) -> Dataset:
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
    station_aet: str = MODALITY_AET,
    modality: str = "CT",
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
    ds.PerformedStationAETitle = station_aet
    ds.PerformedStationName = f"{station_aet}-ROOM"
    ds.PerformedLocation = "RAD"
    now = datetime.now(timezone.utc)
    ds.PerformedProcedureStepStartDate = now.strftime("%Y%m%d")
    ds.PerformedProcedureStepStartTime = now.strftime("%H%M%S")
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = modality
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence([coded(code, "LN", code)] if code else [])
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.Modality = modality
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = Sequence([])
    ds.PerformedSeriesSequence = Sequence([])
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def mpps_from_item(item: Dataset, station_aet: str, study_uid: str = "") -> Dataset:
    """What a modality sends when it starts the worklist item it picked: the item's patient
    and scheduled-step identifiers, copied. `study_uid`: the modality's own, when the item has none."""
    sps = item.ScheduledProcedureStepSequence[0] if item.get("ScheduledProcedureStepSequence") else Dataset()
    procedure = item.RequestedProcedureCodeSequence[0] if item.get("RequestedProcedureCodeSequence") else Dataset()
    return mpps_in_progress(
        accession=_text(item, "AccessionNumber"),
        sps_id=_text(sps, "ScheduledProcedureStepID"),
        study_uid=_text(item, "StudyInstanceUID") or study_uid,
        rp_id=_text(item, "RequestedProcedureID"),
        patient_id=_text(item, "PatientID"),
        issuer=_text(item, "IssuerOfPatientID"),
        name=_text(item, "PatientName"),
        code=_text(procedure, "CodeValue"),
        station_aet=station_aet,
        modality=_text(sps, "Modality") or "OT",
    )


def performed_series(images_per_series: Iterable[int]) -> Sequence:
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


def mpps_final(status: str, images_per_series: Iterable[int] = (), reason: str = "") -> Dataset:
    """An N-SET modification list that ends the step (COMPLETED, or DISCONTINUED with a CID 9300 reason)."""
    ds = Dataset()
    now = datetime.now(timezone.utc)
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = now.strftime("%Y%m%d")
    ds.PerformedProcedureStepEndTime = now.strftime("%H%M%S")
    ds.PerformedSeriesSequence = performed_series(images_per_series)
    if reason:
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence([coded(reason, "DCM", CID_9300[reason])])
    return ds
