"""From FHIR identifiers and references to the correlation keys of a referral.

How a resource names its referral, strongest first:
- an identifier typed PLAC (placer), FILL (filler) or ACSN (accession) per HL7 table v2-0203,
  on the resource itself or in a logical reference (`basedOn: {identifier: ...}`);
- a literal reference `ServiceRequest/X` (or `ImagingStudy/X`, `Appointment/X`,
  `DiagnosticReport/X`): the referral of the resource with logical id X that we received
  earlier, or the loop whose placer order number is X. A bare unknown `ServiceRequest/X` is
  taken as placer order number X only when nothing else names the referral (the loop then
  waits for its order); otherwise the other keys decide and the event is parked until they match.

Patients: `Reference.identifier` (system + value) is the patient ID with its issuer. A literal
`Patient/X` without identifier is the logical id X on the FHIR server the senders share
(issuer `SHARED_FHIR_SERVER`; an absolute reference uses its base URL as issuer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from sqlmodel import Session, select

from refloop.domain.referral import PatientId
from refloop.gateways.intake import Keys
from refloop.store.repo import Store
from refloop.store.tables import InboxRow

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DICOM_UID_SYSTEM = "urn:dicom:uid"
SHARED_FHIR_SERVER = "fhir"

_LITERAL = re.compile(r"^(?:(?P<base>https?://\S+?)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?$")


@dataclass(frozen=True)
class Literal:
    type: str
    id: str
    version: str = ""
    base: str = ""


def parse_literal(reference: str | None) -> Literal | None:
    """`ServiceRequest/123`, `.../ServiceRequest/123/_history/2` or an absolute URL; None otherwise."""
    match = _LITERAL.match((reference or "").strip())
    if not match:
        return None
    return Literal(match["type"], match["id"], match["version"] or "", match["base"] or "")


def identifier_type(identifier: Any) -> str:
    """The v2-0203 code of an Identifier's type (PLAC, FILL, ACSN, MR, ...), or ''."""
    codings = getattr(getattr(identifier, "type", None), "coding", None) or []
    for coding in codings:
        if coding.code and (not coding.system or coding.system == V2_0203):
            return coding.code.upper()
    return ""


def study_uid(identifier: Any) -> str:
    if identifier.system == DICOM_UID_SYSTEM and identifier.value:
        return identifier.value.removeprefix("urn:oid:")
    return ""


def patient_of(reference: Any) -> PatientId | None:
    """The patient ID (with issuer) a Reference names, or None."""
    if reference is None:
        return None
    ident = getattr(reference, "identifier", None)
    if ident is not None and ident.value:
        return PatientId(value=ident.value, issuer=ident.system or "")
    lit = parse_literal(getattr(reference, "reference", None))
    if lit and lit.type == "Patient":
        return PatientId(value=lit.id, issuer=lit.base or SHARED_FHIR_SERVER)
    return None


def as_utc(value: datetime | date | str | None) -> datetime | None:
    """FHIR date/dateTime/instant as an aware UTC datetime (a bare date is taken as midnight UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Resolver:
    """Looks up what earlier messages and loops tell about a reference (SQL, blocking: call in a thread)."""

    def __init__(self, store: Store):
        self.store = store

    @staticmethod
    def _versions_of(resource_type: str, logical_id: str) -> list:
        """Inbox rows of this FHIR resource (any version) that reached a loop: keys are `Type/id/...`."""
        return [
            InboxRow.protocol == "fhir",
            InboxRow.message_type == resource_type,
            InboxRow.referral_id != "",
            InboxRow.message_key.startswith(f"{resource_type}/{logical_id}/", autoescape=True),  # type: ignore[attr-defined]
        ]

    def referrals_of_resource(self, resource_type: str, logical_id: str) -> list[str]:
        """Referrals of the resources with this logical id that we received and handed to a loop."""
        with Session(self.store.engine) as s:
            return sorted(set(s.exec(select(InboxRow.referral_id).where(*self._versions_of(resource_type, logical_id))).all()))

    def loop_exists(self, referral_id: str) -> bool:
        return self.store.get_loop(referral_id) is not None or bool(self.store.find_referrals("placer", referral_id))

    def earlier_versions(self, resource_type: str, logical_id: str, message_key: str) -> bool:
        """Did an earlier version of this resource reach a loop?"""
        with Session(self.store.engine) as s:
            query = select(InboxRow.id).where(*self._versions_of(resource_type, logical_id), InboxRow.message_key != message_key)
            return s.exec(query).first() is not None


@dataclass
class KeyCollector:
    """Gathers the correlation keys a resource carries, then decides which referral it names."""

    resolver: Resolver
    placer: str = ""
    filler: str = ""
    accession: str = ""
    study_uid: str = ""
    unresolved_orders: list[str] = field(default_factory=list)

    def identifier(self, ident: Any, untyped_means: str = "") -> None:
        """An Identifier; `untyped_means` says what an identifier without a type is (e.g. 'placer')."""
        if ident is None or not ident.value:
            return
        uid = study_uid(ident)
        if uid:
            self.study_uid = self.study_uid or uid
            return
        kind = {"PLAC": "placer", "FILL": "filler", "ACSN": "accession"}.get(identifier_type(ident), "")
        if not kind and not identifier_type(ident):
            kind = untyped_means
        if kind == "placer" and not self.placer:
            self.placer = ident.value
        elif kind == "filler" and not self.filler:
            self.filler = ident.value
        elif kind == "accession" and not self.accession:
            self.accession = ident.value

    def reference(self, ref: Any, untyped_means: str = "") -> None:
        """A Reference to the order, study, appointment or report this resource belongs to."""
        if ref is None:
            return
        if getattr(ref, "identifier", None) is not None:
            self.identifier(ref.identifier, untyped_means)
        lit = parse_literal(getattr(ref, "reference", None))
        if lit is None or lit.type == "Patient":
            return
        found = self.resolver.referrals_of_resource(lit.type, lit.id)
        if len(found) == 1 and not self.placer:
            self.placer = found[0]
        elif not found and lit.type == "ServiceRequest":
            if self.resolver.loop_exists(lit.id) and not self.placer:
                self.placer = lit.id
            else:
                self.unresolved_orders.append(lit.id)
        elif not found and lit.type == "DiagnosticReport" and not self.placer:
            resolved = self.resolver.store.resolve(lit.id)
            if resolved:
                self.placer = resolved

    @property
    def empty(self) -> bool:
        return not (self.placer or self.filler or self.accession or self.study_uid or self.unresolved_orders)

    def keys(self, patient: PatientId | None = None, awaiting_arrival: bool = False) -> Keys:
        placer = self.placer
        if not placer and not (self.filler or self.accession or self.study_uid) and len(set(self.unresolved_orders)) == 1:
            placer = self.unresolved_orders[0]  # the order is not here yet: its loop will wait for it
        return Keys(
            placer_order_number=placer,
            filler_order_number=self.filler,
            accession_number=self.accession,
            study_instance_uid=self.study_uid,
            patient=patient,
            match_patient_awaiting_arrival=awaiting_arrival and patient is not None,
        )
