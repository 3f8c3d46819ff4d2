"""Modality Performed Procedure Step SCP (N-CREATE, N-SET): the modality's account of what it
did becomes procedure_started / completed / discontinued on the loop, through the Intake.

The instance's state is kept in SQL (mpps_instances), so the answers survive a restart:
N-SET for an instance never created -> 0x0112 (the N-SET is kept and replayed if its N-CREATE
comes later); any N-SET after COMPLETED or DISCONTINUED -> 0x0110. The modality gets a
positive answer only once the event is in the loop's history or parked.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import datetime, timezone, tzinfo

import structlog
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.uid import generate_uid

from refloop.gateways.dicom import mpps_events as mp
from refloop.gateways.dicom.status import failure
from refloop.gateways.intake import Inbound, Intake, Result
from refloop.store.imaging import COMPLETED, DISCONTINUED, FINAL_STATES, IN_PROGRESS, ORPHAN, ImagingStore, MppsRow

log = structlog.get_logger()

NO_SUCH_INSTANCE, PROCESSING_FAILURE, DUPLICATE_INSTANCE = 0x0112, 0x0110, 0x0111
INVALID_VALUE, ATTRIBUTE_LIST_ERROR, MISSING_ATTRIBUTE = 0x0106, 0x0107, 0x0120
# Attributes an N-SET may not change (PS3.4 F.7.2.2, type 0 in the N-SET IOD): ignored, not refused,
# so a sloppy modality's COMPLETED still reaches the loop.
NOT_SETTABLE = frozenset(
    tag_for_keyword(k)
    for k in (
        "ScheduledStepAttributesSequence", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
        "PatientSex", "ReferencedPatientSequence", "PerformedProcedureStepID", "PerformedStationAETitle",
        "PerformedStationName", "PerformedLocation", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "Modality", "StudyID", "SpecificCharacterSet",
    )
)


Reply = tuple[int | Dataset, Dataset | None]  # (status, attribute list) as pynetdicom wants it


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _json(ds: Dataset) -> str:
    return json.dumps(ds.to_json_dict())


class MppsService:
    def __init__(self, imaging: ImagingStore, intake: Intake, loop: asyncio.AbstractEventLoop, tz: tzinfo, timeout: float = 30.0):
        self.imaging = imaging
        self.intake = intake
        self.loop = loop  # the event loop the Intake runs on; handlers run in association threads
        self.tz = tz
        self.timeout = timeout
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, uid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(uid, threading.Lock())

    def _hand_over(self, inbound: Inbound) -> Result:
        return asyncio.run_coroutine_threadsafe(self.intake.receive(inbound), self.loop).result(self.timeout)

    def _serialized(self, uid: str, operation: str, work: Callable[[], Reply]) -> Reply:
        """One message per instance at a time. An unexpected failure (Temporal or SQL away) is
        answered 0x0110 with a comment: nothing was recorded, so the modality's retry is safe."""
        with self._lock(uid):
            try:
                return work()
            except Exception as err:
                log.exception("mpps_failed", mpps_uid=uid, operation=operation)
                return failure(PROCESSING_FAILURE, f"cannot record the step now ({type(err).__name__}); retry"), None

    # --- N-CREATE -------------------------------------------------------------------------------

    def on_create(self, event) -> Reply:
        """pynetdicom EVT_N_CREATE handler."""
        calling = event.assoc.requestor.ae_title
        requested = event.request.AffectedSOPInstanceUID
        uid = str(requested) if requested else generate_uid()
        try:
            attrs = event.attribute_list
            attrs.decode()
        except Exception:
            return failure(ATTRIBUTE_LIST_ERROR, "attribute list cannot be decoded"), None
        reply = self._serialized(uid, "create", lambda: self._create(uid, attrs, calling))
        if reply[0] != 0x0000 or requested:  # a failure is a status Dataset, never 0
            return reply
        assigned = Dataset()
        assigned.AffectedSOPInstanceUID = uid  # PS3.7 10.1.5.1.4: we assigned it, so we return it
        return 0x0000, assigned

    def _create(self, uid: str, attrs: Dataset, calling: str) -> Reply:
        state = mp.text(attrs, "PerformedProcedureStepStatus")
        if not state:
            return failure(MISSING_ATTRIBUTE, "Performed Procedure Step Status (0040,0252) missing"), None
        if state != IN_PROGRESS:
            return failure(INVALID_VALUE, f"N-CREATE status must be IN PROGRESS, not {state}"), None
        row = self.imaging.get_mpps(uid)
        if row is not None and row.status != ORPHAN:
            return failure(DUPLICATE_INSTANCE, f"MPPS instance exists ({row.status})"), None
        all_keys = mp.step_keys(attrs)
        now = _now()
        results = [
            self._hand_over(
                Inbound(
                    protocol="dicom",
                    sender=calling,
                    message_key=f"mpps:{uid}:create" + (f":{i}" if i else ""),
                    message_type="MPPS N-CREATE",
                    raw=_json(attrs),
                    event=mp.started(uid, attrs, keys, calling, self.tz, now),
                    keys=keys,
                )
            )
            for i, keys in enumerate(all_keys)
        ]
        first = all_keys[0]
        code, _ = mp.performed_procedure(attrs)
        series, instances = mp.performed_counts(attrs)
        pending = json.loads(row.pending_sets_json) if row else []
        self.imaging.save_mpps(
            MppsRow(
                sop_instance_uid=uid,
                status=IN_PROGRESS,
                calling_ae=calling,
                referral_id=next((r.referral_id for r in results if r.referral_id), ""),
                accession_number=first.accession_number,
                sps_id=first.sps_id,
                requested_procedure_id=first.requested_procedure_id,
                study_instance_uid=first.study_instance_uid,
                patient_id=first.patient.value if first.patient else "",
                patient_issuer=first.patient.issuer if first.patient else "",
                procedure_code=code,
                series_count=series,
                instance_count=instances,
                created_at=row.created_at if row else now,
                updated_at=now,
                attributes_json=_json(attrs),
                pending_sets_json="[]",
            )
        )
        log.info("mpps_created", mpps_uid=uid, calling_ae=calling, status=[r.status.value for r in results], referral_id=results[0].referral_id)
        for mods in pending:  # N-SETs that came before this N-CREATE, in their order
            status, _ = self._set(uid, Dataset.from_json(mods), calling)
            log.info("mpps_set_replayed", mpps_uid=uid, status=status if isinstance(status, int) else int(status.Status))
        return 0x0000, None

    # --- N-SET ----------------------------------------------------------------------------------

    def on_set(self, event) -> Reply:
        """pynetdicom EVT_N_SET handler."""
        calling = event.assoc.requestor.ae_title
        uid = str(event.request.RequestedSOPInstanceUID)
        try:
            mods = event.modification_list
            mods.decode()
        except Exception:
            return failure(ATTRIBUTE_LIST_ERROR, "modification list cannot be decoded"), None
        return self._serialized(uid, "set", lambda: self._set(uid, mods, calling))

    def _set(self, uid: str, mods: Dataset, calling: str) -> Reply:
        row = self.imaging.get_mpps(uid)
        if row is None or row.status == ORPHAN:
            waiting = self.imaging.park_mpps_set(uid, calling, mods.to_json_dict())
            log.warning("mpps_set_unknown_instance", mpps_uid=uid, calling_ae=calling, waiting=waiting)
            return failure(NO_SUCH_INSTANCE, "no N-CREATE for this MPPS; N-SET kept until it comes"), None
        if row.status in FINAL_STATES:
            return failure(PROCESSING_FAILURE, f"MPPS is already {row.status}; it cannot change"), None
        attrs = Dataset.from_json(row.attributes_json)
        ignored = [e.keyword or str(e.tag) for e in mods if e.tag in NOT_SETTABLE]
        for elem in mods:
            if elem.tag not in NOT_SETTABLE:
                attrs[elem.tag] = elem
        state = mp.text(attrs, "PerformedProcedureStepStatus")
        if state not in (IN_PROGRESS, COMPLETED, DISCONTINUED):
            return failure(INVALID_VALUE, f"invalid Performed Procedure Step Status {state!r}"), None
        if state in FINAL_STATES:
            event = mp.finished(uid, attrs, calling, self.tz, _now())
            # The N-CREATE's keys: attrs kept its ScheduledStepAttributesSequence (not settable).
            for i, keys in enumerate(mp.step_keys(attrs)):
                self._hand_over(
                    Inbound(
                        protocol="dicom",
                        sender=calling,
                        message_key=f"mpps:{uid}:{state.lower()}" + (f":{i}" if i else ""),
                        message_type=f"MPPS N-SET {state}",
                        raw=_json(mods),
                        event=event,
                        keys=keys,
                    )
                )
            row.reason_code = mp.discontinuation_reason(attrs)[0] if state == DISCONTINUED else ""
        row.status = state
        row.series_count, row.instance_count = mp.performed_counts(attrs)
        row.procedure_code = mp.performed_procedure(attrs)[0] or row.procedure_code
        row.attributes_json = _json(attrs)
        self.imaging.save_mpps(row)
        log.info("mpps_set", mpps_uid=uid, calling_ae=calling, state=state, instances=row.instance_count, ignored=ignored or None)
        return 0x0000, None
