"""What every gateway does with a translated message: keep it, deduplicate it, find its
referral, and hand it to Temporal (or park it until its referral is known).

The sender is acknowledged only after `Intake.receive` returns: by then the event is either
durably in the workflow's history (signal-with-start) or durably parked in SQL.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum

import structlog
from pydantic import BaseModel
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from refloop.domain.events import EventBase
from refloop.domain.policy import Policy
from refloop.domain.referral import PatientId, referral_key
from refloop.gateways.dispatch import signal_event
from refloop.store.repo import InboxStore, Store, patient_key

log = structlog.get_logger()


class Keys(BaseModel):
    """Identifiers a message carries that can tie it to a referral, strongest first."""

    placer_order_number: str = ""
    placer_system: str = ""
    filler_order_number: str = ""
    accession_number: str = ""
    study_instance_uid: str = ""
    sps_id: str = ""
    requested_procedure_id: str = ""
    patient: PatientId | None = None
    # Patient alone may bind only events that can only concern a booked, not-yet-arrived loop.
    match_patient_awaiting_arrival: bool = False
    # The event concerns the patient, not one order (a merge): every open loop of theirs gets it.
    all_open_loops_of_patient: bool = False

    def lookup(self) -> list[tuple[str, str]]:
        pairs = [
            ("filler", self.filler_order_number),
            ("accession", self.accession_number),
            ("study_uid", self.study_instance_uid),
            ("sps_id", self.sps_id),
            ("rp_id", self.requested_procedure_id),
        ]
        return [(k, v) for k, v in pairs if v]


class Status(StrEnum):
    ACCEPTED = "accepted"  # signalled to its loop
    PARKED = "parked"  # kept until its referral is known
    AMBIGUOUS = "ambiguous"  # more than one loop claims it: an operator decides
    REJECTED = "rejected"  # could not be understood
    LATE = "late"  # its loop has already completed (after the amendment window): an operator decides
    DUPLICATE = "duplicate"  # seen before; answered as the first time


@dataclass
class Inbound:
    protocol: str  # hl7, fhir, json, dicom, orthanc
    sender: str
    message_key: str  # the sender's idempotency key (MSH-10, resource id+version, event_id, ...)
    message_type: str
    raw: str
    event: EventBase | None = None
    keys: Keys = field(default_factory=Keys)
    error: str = ""  # set when the gateway could not translate the message


@dataclass
class Result:
    status: Status
    referral_id: str = ""
    detail: str = ""
    first_status: Status | None = None  # for duplicates: what happened the first time

    @property
    def positive(self) -> bool:
        """Should the sender get a positive acknowledgment?"""
        status = self.first_status if self.status == Status.DUPLICATE else self.status
        return status in (Status.ACCEPTED, Status.PARKED, Status.AMBIGUOUS, Status.LATE)


class Intake:
    def __init__(self, client: Client, store: Store, task_queue: str, policy: Policy | None = None):
        self.client = client
        self.store = store
        self.inbox = InboxStore(store.engine)
        self.task_queue = task_queue
        self.policy = policy or Policy()

    async def receive(self, msg: Inbound) -> Result:
        row, new = await asyncio.to_thread(self.inbox.claim, msg.protocol, msg.sender, msg.message_key, msg.message_type, msg.raw)
        if not new and row.status not in ("received", "failed"):
            log.info("inbound_duplicate", protocol=msg.protocol, message_key=msg.message_key, first_status=row.status)
            first = Status.ACCEPTED if row.status == "released" else Status(row.status)
            return Result(Status.DUPLICATE, row.referral_id, f"already {row.status}", first_status=first)
        assert row.id is not None
        if msg.error or msg.event is None:
            await asyncio.to_thread(self.inbox.update, row.id, status=Status.REJECTED.value, error=msg.error or "no event")
            log.info("inbound_rejected", protocol=msg.protocol, message_type=msg.message_type, error=msg.error)
            return Result(Status.REJECTED, detail=msg.error)
        try:
            return await self._route(row.id, msg)
        except Exception as err:
            # Not acknowledged: the sender retries, and the retry finds this row as "failed".
            await asyncio.to_thread(self.inbox.update, row.id, status="failed", error=str(err)[:2000])
            raise

    async def _route(self, row_id: int, msg: Inbound) -> Result:
        assert msg.event is not None
        candidates = await asyncio.to_thread(self.correlate, msg.keys)
        if msg.keys.all_open_loops_of_patient:
            return await self._fan_out(row_id, candidates, msg)
        if len(candidates) == 1:
            return await self._dispatch(row_id, candidates[0], msg)
        event_json = msg.event.model_dump_json()
        kind = msg.event.kind  # type: ignore[attr-defined]
        if len(candidates) > 1:
            detail = f"{len(candidates)} referrals match: {', '.join(candidates)}"
            await asyncio.to_thread(self.inbox.park, row_id, event_json, kind, msg.event.event_id, [], Status.AMBIGUOUS.value, detail)
            log.warning("inbound_ambiguous", protocol=msg.protocol, event_kind=kind, candidates=len(candidates))
            return Result(Status.AMBIGUOUS, detail=detail)
        keys = msg.keys.lookup()
        if msg.keys.patient and msg.keys.match_patient_awaiting_arrival:
            # Released to the loop of this patient that is booked and awaiting arrival.
            keys.append(("patient", patient_key(msg.keys.patient)))
        await asyncio.to_thread(self.inbox.park, row_id, event_json, kind, msg.event.event_id, keys)
        # A loop may have indexed these identifiers while we parked: look once more.
        again = await asyncio.to_thread(self.correlate, msg.keys)
        if len(again) == 1:
            return await self._dispatch(row_id, again[0], msg)
        log.info("inbound_parked", protocol=msg.protocol, event_kind=kind)
        return Result(Status.PARKED, detail="no referral known yet for " + (", ".join(f"{k}={v}" for k, v in keys) or "these identifiers"))

    def correlate(self, keys: Keys) -> list[str]:
        """Referral IDs this message belongs to: one is a match, several are ambiguous."""
        if keys.patient and keys.all_open_loops_of_patient:
            return self.inbox.open_referrals_of_patient(patient_key(keys.patient))
        if keys.placer_order_number:
            rid = referral_key(keys.placer_order_number, keys.placer_system)
            if not keys.placer_system and not self.store.find_referrals("placer", rid):
                # Named without its assigning system: the one loop whose placer number it is.
                qualified = self.store.find_referrals("placer_number", keys.placer_order_number)
                if qualified:
                    return qualified
            return [rid]
        # Every known key is evidence: loops all of them point at win. Keys that point at
        # different loops are ambiguous (an operator decides), never a guess.
        found = [set(self.store.find_referrals(kind, value)) for kind, value in keys.lookup()]
        found = [f for f in found if f]
        if found:
            candidates = set.intersection(*found) or set.union(*found)
            if len(candidates) > 1 and keys.patient:
                # e.g. one accession shared by several requested procedures: the patient narrows it.
                same_patient = candidates & set(self.store.find_referrals("patient", patient_key(keys.patient)))
                candidates = same_patient or candidates
            return sorted(candidates)
        if keys.patient and keys.match_patient_awaiting_arrival:
            return self.inbox.referrals_awaiting_arrival(patient_key(keys.patient))
        return []

    async def _fan_out(self, row_id: int, referral_ids: list[str], msg: Inbound) -> Result:
        """Signal every loop the event concerns; none is fine (nothing open to update)."""
        assert msg.event is not None
        signalled = []
        for rid in referral_ids:
            try:
                await signal_event(self.client, self.task_queue, rid, msg.event, self.policy)
                signalled.append(rid)
            except WorkflowAlreadyStartedError:
                continue  # completed meanwhile: nothing open to update there
        referral_ids = signalled
        kind = msg.event.kind  # type: ignore[attr-defined]
        await asyncio.to_thread(
            self.inbox.update,
            row_id,
            status=Status.ACCEPTED.value,
            referral_id=",".join(referral_ids),
            event_kind=kind,
            event_id=msg.event.event_id,
            event_json=msg.event.model_dump_json(),
        )
        log.info("inbound_accepted", protocol=msg.protocol, event_kind=kind, referrals=len(referral_ids))
        return Result(Status.ACCEPTED, ",".join(referral_ids), "" if referral_ids else "no open loop concerns it")

    async def _dispatch(self, row_id: int, referral_id: str, msg: Inbound) -> Result:
        assert msg.event is not None
        try:
            await signal_event(self.client, self.task_queue, referral_id, msg.event, self.policy)
        except WorkflowAlreadyStartedError:
            # The loop completed (its amendment window is over): never start a second loop
            # for the same referral; keep the message for an operator instead.
            detail = "the referral's loop has already completed"
            await asyncio.to_thread(
                self.inbox.update, row_id, status=Status.LATE.value, referral_id=referral_id, error=detail,
                event_kind=msg.event.kind, event_id=msg.event.event_id, event_json=msg.event.model_dump_json(),  # type: ignore[attr-defined]
            )
            log.warning("inbound_late", protocol=msg.protocol, event_kind=msg.event.kind, referral_id=referral_id)  # type: ignore[attr-defined]
            return Result(Status.LATE, referral_id, detail)
        await asyncio.to_thread(
            self.inbox.update,
            row_id,
            status=Status.ACCEPTED.value,
            referral_id=referral_id,
            event_kind=msg.event.kind,  # type: ignore[attr-defined]
            event_id=msg.event.event_id,
            event_json=msg.event.model_dump_json(),
        )
        log.info("inbound_accepted", protocol=msg.protocol, event_kind=msg.event.kind, referral_id=referral_id)  # type: ignore[attr-defined]
        return Result(Status.ACCEPTED, referral_id)
