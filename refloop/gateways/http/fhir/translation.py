"""What a FHIR translator gets and gives: the resource's context in, an event and its keys out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from refloop.domain.events import EventBase
from refloop.gateways.http.fhir.refs import Resolver, as_utc
from refloop.gateways.intake import Keys


class NotTranslatable(Exception):
    """The resource is valid FHIR but says nothing refloop can act on; `reason` tells the sender why.

    `code` is an OperationOutcome issue type (business-rule, not-supported, required, structure...).
    """

    def __init__(self, reason: str, code: str = "business-rule", status: int = 422, expression: list[str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.status = status
        self.expression = expression or []


@dataclass
class Translation:
    event: EventBase
    keys: Keys


@dataclass
class Context:
    sender: str  # the authenticated source system: becomes the event's source
    message_key: str  # idempotency key of this resource version
    received_at: datetime
    resolver: Resolver

    @property
    def event_id(self) -> str:
        return f"fhir:{self.sender}:{self.message_key}"

    def when(self, *candidates: Any) -> datetime:
        """The first timestamp the resource gives (in the order asked), else the time we received it."""
        for value in candidates:
            at = as_utc(value)
            if at is not None:
                return at
        return self.received_at


def last_updated(resource: Any) -> Any:
    meta = getattr(resource, "meta", None)
    return meta.lastUpdated if meta is not None else None


def code_text(concept: Any) -> tuple[str, str, str]:
    """(code, system, display) of a CodeableConcept: its first coding, display falling back to text."""
    if concept is None:
        return "", "", ""
    coding = (concept.coding or [None])[0]
    code = coding.code if coding and coding.code else ""
    system = coding.system if coding and coding.system else ""
    display = (coding.display if coding and coding.display else "") or (concept.text or "")
    return code, system, display


def reference_label(ref: Any) -> str:
    """A person-readable label for a Reference (display, else the reference itself)."""
    if ref is None:
        return ""
    return ref.display or ref.reference or (ref.identifier.value if ref.identifier is not None else "") or ""


def require_keys(keys: Keys, what: str, expression: list[str]) -> Keys:
    if keys.placer_order_number or keys.lookup() or keys.match_patient_awaiting_arrival:
        return keys
    raise NotTranslatable(
        f"{what} names no referral: give basedOn a ServiceRequest (reference or placer identifier) "
        "or carry an accession (identifier type ACSN), filler (FILL) or study UID (urn:dicom:uid) identifier",
        code="required",
        expression=expression,
    )
