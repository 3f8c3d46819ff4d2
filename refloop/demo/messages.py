"""The day's messages, built from the public samples for one referral.

Each message keeps its sample's structure (segments, fields, JSON shape). What changes:
- identifiers: placer/filler order numbers, accession, requested procedure and step IDs,
  study UID, patient ID (and its issuer where a sample from another registry must match),
  message control IDs, FHIR ids and references; the placeholder station AE titles;
- times: every time the loop reasons with is now, or the booked appointment (today);
- what the story decides, in the fields made for it: order control and its reason (ORC-1,
  ORC-16), priority (TQ1-9 / ORC-7.6), modality (IPC-5 / OBR-24), result status (OBR-25).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pydicom import Dataset

from refloop.demo.dicom_dump import parse_dump
from refloop.demo.rekey import fhir_time, hl7_time, parse_hl7, rekey_hl7, rekey_json
from refloop.demo.samples import Samples
from refloop.domain.referral import referral_key

OMI = "dcm4che/OMI_O23-ImagingOrder.hl7"  # placer MESA_OF; IPC: accession, study, step, stations
ORM = "microsoft-fhir-converter/ORM-O01-01.hl7"  # placer ORDApp; CT head; order numbers with namespaces
SIU = "microsoft-fhir-converter/SIU-S12-01.hl7"
A10 = "microsoft-fhir-converter/ADT-A10-01.hl7"  # patient arriving; PID-3 issuer ADT1
A04 = "microsoft-fhir-converter/ADT-A04-01.hl7"  # registration; PID-3 issuer test1
ORU_SR = "dcm4che/ORU_R01-SR.hl7"  # structured report; some findings flagged AA (critical)
ORU_CDA = "dcm4che/ORU_R01-CDA.hl7"
MWL_QUERY = "dcmtk-wlistqry/wlistqry2.dump"  # accession, patient, study, step keys; station AE "AA2"
SERVICE_REQUEST = "servicerequest-example-di.json"
APPOINTMENT = "appointment-example.json"
ENCOUNTER = "encounter-example.json"
IMAGING_STUDY = "imagingstudy-example-xr.json"

# The placers' applications (MSH-3): results of their orders go to the demo EHR.
PLACER_APPLICATIONS = ("MESA_OF", "ORDApp")
DICOM_STUDY = "113014"


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@dataclass(frozen=True)
class Ids:
    """Everything that ties one referral's messages together; unique per run."""

    placer: str
    placer_ns: str  # the namespace the placer's sample gives its order numbers ("" for none)
    filler: str
    accession: str
    rp_id: str
    sps_id: str
    study_uid: str
    patient: str
    issuer: str  # the patient ID's assigning authority, as the order's sample has it
    station_aet: str
    appointment: datetime

    @classmethod
    def allocate(cls, tag: str, n: int, *, issuer: str, placer_ns: str = "", station_aet: str = "", appointment: datetime) -> Ids:
        key = f"{tag}-{n:02d}"
        return cls(
            placer=key, placer_ns=placer_ns, filler=f"F{key}", accession=f"A{key}", rp_id=f"R{key}", sps_id=f"S{key}",
            study_uid=new_uid(), patient=f"P{key}", issuer=issuer, station_aet=station_aet, appointment=appointment,
        )

    @property
    def room(self) -> str:
        """The scheduled station's name (DICOM SH: at most 16 characters)."""
        return f"{self.station_aet or 'CT'}-ROOM"

    @property
    def referral_id(self) -> str:
        return referral_key(self.placer, self.placer_ns)

    def ei(self, number: str) -> str:
        """An order number as an EI field, in the placer's namespace."""
        return f"{number}^{self.placer_ns}" if self.placer_ns else number

    def control(self, what: str) -> str:
        """MSH-10: unique per message."""
        return f"{self.placer}.{what}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Messages:
    def __init__(self, samples: Samples):
        self.samples = samples

    def _hl7(self, name: str, ids: Ids, what: str, changes: dict[str, str]) -> bytes:
        """The sample with its header, patient and `changes` re-keyed."""
        data = self.samples.hl7(name)
        pid3 = str(parse_hl7(data).segment("PID")[3][0])  # first repetition of PID-3
        issuer_component = pid3.split("^")[3].split("&")[0] if pid3.count("^") >= 3 else ""
        base = {"MSH.F7": hl7_time(_now()), "MSH.F10": ids.control(what), "PID.F3.R1.C1": ids.patient}
        if issuer_component != ids.issuer:
            base["PID.F3.R1.C4"] = ids.issuer  # another registry's sample: the order's issuer
        return rekey_hl7(data, {**base, **changes})

    # --- orders ---------------------------------------------------------------------------

    def omi(self, ids: Ids, *, priority: str, modality: str, control: str = "NW", reason: str = "") -> bytes:
        """OMI^O23 (dcm4che): an imaging order with its IPC (accession, study, step, station)."""
        changes = {
            "ORC.F1": control, "ORC.F2": ids.ei(ids.placer), "ORC.F3": ids.ei(ids.filler),
            "OBR.F2": ids.ei(ids.placer), "OBR.F3": ids.ei(ids.filler),
            "TQ1.F7": hl7_time(ids.appointment), "TQ1.F9": priority,
            "IPC.F1": ids.accession, "IPC.F2": ids.rp_id, "IPC.F3": ids.study_uid, "IPC.F4": ids.sps_id,
            "IPC.F5": modality, "IPC.F7": ids.room, "IPC.F8": "RAD", "IPC.F9": ids.station_aet,
        }
        if reason:
            changes["ORC.F16"] = reason
        return self._hl7(OMI, ids, f"order-{control}", changes)

    def orm(self, ids: Ids, *, priority: str, modality: str, control: str = "NW", reason: str = "") -> bytes:
        """ORM^O01 (Microsoft): a CT head order; accession and step IDs in OBR-18/19/20."""
        now = hl7_time(_now())
        changes = {
            "ORC.F1": control, "ORC.F2.R1.C1": ids.placer, "ORC.F3.R1.C1": ids.filler,
            "ORC.F7.R1.C4": hl7_time(ids.appointment), "ORC.F7.R1.C5": hl7_time(ids.appointment + timedelta(minutes=30)),
            "ORC.F7.R1.C6": priority, "ORC.F9": now, "ORC.F15": now,
            "OBR.F7": now, "OBR.F18": ids.accession, "OBR.F19": ids.rp_id, "OBR.F20": ids.sps_id, "OBR.F24": modality,
            "PV1.F44": now,
        }
        if reason:
            changes["ORC.F16"] = reason
        return self._hl7(ORM, ids, f"order-{control}", changes)

    # --- booking and arrival ----------------------------------------------------------------

    def booking(self, ids: Ids) -> bytes:
        """SIU^S12 (Microsoft) naming the order in SCH-26, for the appointment time."""
        start, end = hl7_time(ids.appointment), hl7_time(ids.appointment + timedelta(minutes=50))
        changes = {
            "SCH.F1": f"AP{ids.placer}", "SCH.F2": f"AF{ids.placer}", "SCH.F11.R1.C4": start, "SCH.F11.R1.C5": end,
            "SCH.F26": ids.ei(ids.placer), "TQ1.F7": start, "TQ1.F8": end,
            "AIS.F4": start, "AIG.F8": start, "AIL.F6": start, "AIP.F6": start, "PV1.F44": hl7_time(_now()),
            # The sample books a colonoscope (AIG-3 resource ID and name): the room of this loop.
            "AIG.F3.R1.C1": ids.room, "AIG.F3.R1.C2": ids.room,
        }
        return self._hl7(SIU, ids, "booking", changes)

    def arrival(self, ids: Ids, sample: str = A10) -> bytes:
        """ADT^A10 / A04 (Microsoft): the patient checks in (names the patient, not the order)."""
        now = hl7_time(_now())
        return self._hl7(sample, ids, "arrival", {"EVN.F2": now, "EVN.F6": now, "PV1.F44": now})

    # --- reports ------------------------------------------------------------------------------

    def report(self, ids: Ids, sample: str = ORU_CDA, *, status: str = "F") -> bytes:
        """ORU^R01 (dcm4che) for the study, OBR-25 = `status` (P, F, C)."""
        msg = parse_hl7(self.samples.hl7(sample))
        changes = {
            "OBR.F2": ids.ei(ids.placer), "OBR.F3": ids.ei(ids.filler), "OBR.F7": hl7_time(_now()),
            "OBR.F18": ids.accession, "OBR.F19": ids.rp_id, "OBR.F25": status,
        }
        obxs = [s for s in msg if str(s[0]) == "OBX"]
        for n, obx in enumerate(obxs, 1):
            value, code = str(obx[5]) if len(obx) > 5 else "", obx.extract_field(1, 3, 1, 1, 1) if len(obx) > 3 else ""
            if str(code) == DICOM_STUDY:
                changes[f"OBX{n}.F5"] = ids.study_uid
            elif value.startswith("1.2.392.200036.9125.0.198811291108.7."):  # series / SR instance of the sample study
                changes[f"OBX{n}.F5"] = ids.study_uid + value.removeprefix("1.2.392.200036.9125.0.198811291108.7")
            if len(obx) > 14 and str(obx[14]):
                changes[f"OBX{n}.F14"] = hl7_time(_now())
        return self._hl7(sample, ids, f"report-{status}", changes)

    # --- FHIR ---------------------------------------------------------------------------------

    def service_request(self, ids: Ids) -> dict:
        """The FHIR DI order (Chest CT); its id is the placer order number."""
        return rekey_json(self.samples.fhir(SERVICE_REQUEST), {
            "di": ids.placer, "Patient/dicom": f"Patient/{ids.patient}", "2013-05-08T09:33:27+07:00": fhir_time(ids.appointment),
        })

    def appointment(self, ids: Ids) -> dict:
        return rekey_json(self.samples.fhir(APPOINTMENT), {
            "example": f"ap-{ids.placer}",
            "ServiceRequest/myringotomy": f"ServiceRequest/{ids.placer}",
            "Patient/example": f"Patient/{ids.patient}",
            "2013-12-10T09:00:00Z": fhir_time(ids.appointment),
            "2013-12-10T11:00:00Z": fhir_time(ids.appointment + timedelta(minutes=30)),
            "2013-10-10": fhir_time(_now()),  # created: the booking is made now
        })

    def encounter(self, ids: Ids, patient: str) -> dict:
        """The patient `patient` checked in against the appointment: the sample Encounter, which
        names no appointment as published, gets `appointment` (the one element added)."""
        encounter = rekey_json(self.samples.fhir(ENCOUNTER), {"example": f"enc-{ids.placer}", "Patient/example": f"Patient/{patient}"})
        encounter["appointment"] = [{"reference": f"Appointment/ap-{ids.placer}"}]
        return encounter

    def imaging_study(self, ids: Ids) -> dict:
        """The archive says the study is available (FHIR ImagingStudy, 1 series of 2 images)."""
        sample_study = "2.16.124.113543.6003.1154777499.30246.19789.3503430046"
        sample_series = "2.16.124.113543.6003.1154777499.30246.19789.3503430045.1"
        now = fhir_time(_now())
        return rekey_json(self.samples.fhir(IMAGING_STUDY), {
            "example-xr": f"st-{ids.placer}",
            f"urn:oid:{sample_study}": f"urn:oid:{ids.study_uid}",
            "W12342398": ids.accession,
            "55551234": f"S2{ids.placer}",
            "ServiceRequest/example": f"ServiceRequest/{ids.placer}",
            "Patient/dicom": f"Patient/{ids.patient}",
            sample_series: f"{ids.study_uid}.1",
            f"{sample_series}.1": f"{ids.study_uid}.1.1",
            f"{sample_series}.2": f"{ids.study_uid}.1.2",
            "2017-01-01T11:01:20+03:00": now,
            "2011-01-01T11:01:20+03:00": now,
        })

    # --- DICOM --------------------------------------------------------------------------------

    def worklist_query(self, ids: Ids, by: str) -> Dataset:
        """The DCMTK sample query, asking by accession number or by the modality's AE title."""
        query = parse_dump(self.samples.dump(MWL_QUERY))
        step = query.ScheduledProcedureStepSequence[0]
        step.ScheduledStationName = None  # the sample's station "A2": any
        if by == "accession":
            query.AccessionNumber, step.ScheduledStationAETitle = ids.accession, None
        else:
            step.ScheduledStationAETitle = ids.station_aet
        return query
