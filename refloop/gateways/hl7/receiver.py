"""One HL7 message in, one ACK out: translate, hand each event to the intake, acknowledge.

No sockets here. The ACK is built only after every `Intake.receive` returned, so an AA means
the events are in their workflows' histories or durably parked. If the intake fails (Temporal
or the store unreachable) the answer is AE: nothing was taken, the sender resends, and the
resend is deduplicated by MSH-10.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import structlog

from refloop.gateways.hl7.ack import build_ack
from refloop.gateways.hl7.decode import encode_reply
from refloop.gateways.hl7.errors import Hl7Error
from refloop.gateways.hl7.translate import Translation, translate
from refloop.gateways.intake import Inbound, Intake, Result, Status

log = structlog.get_logger()

PROTOCOL = "hl7"
_NOT_TAKEN = "temporarily unable to accept the message (workflow engine or store unavailable); please resend"


class Hl7Receiver:
    def __init__(self, intake: Intake, processing_ids: Collection[str] = ("P",), requester_endpoints: Mapping[str, str] | None = None):
        self.intake = intake
        self.processing_ids = frozenset(p.strip().upper() for p in processing_ids if p.strip())
        self.requester_endpoints = dict(requester_endpoints or {})

    async def handle(self, data: bytes) -> bytes:
        t = translate(data, self.processing_ids, self.requester_endpoints)
        try:
            code, text, error = await self._receive(t)
        except Exception as err:  # noqa: BLE001 - whatever failed, the sender must resend
            log.warning("hl7_not_taken", message_type=t.message_type, control_id=t.message_key, error=type(err).__name__)
            code, text, error = "AE", _NOT_TAKEN, Hl7Error(207, _NOT_TAKEN)
        log.info("hl7_answered", message_type=t.message_type, sender=t.sender, control_id=t.message_key, ack=code)
        return encode_reply(build_ack(t.message, code, text, error), t.charset)

    async def _receive(self, t: Translation) -> tuple[str, str, Hl7Error | None]:
        if t.error is not None:
            await self.intake.receive(Inbound(PROTOCOL, t.sender, t.message_key, t.message_type, t.text, error=str(t.error)))
            return "AR", str(t.error), t.error
        results = [
            await self.intake.receive(Inbound(PROTOCOL, t.sender, item.message_key, t.message_type, t.text, item.event, item.keys))
            for item in t.items
        ]
        if not all(r.positive for r in results):  # the intake refused it earlier under this key
            err = Hl7Error(205, f"message control ID {t.message_key!r} was received before and refused; resend under a new MSH-10", "MSH", field=10)
            return "AR", str(err), err
        return "AA", "; ".join(_outcome(r) for r in results), None


def _outcome(r: Result) -> str:
    status = r.first_status if r.status == Status.DUPLICATE and r.first_status else r.status
    text = {
        Status.ACCEPTED: "accepted",
        Status.PARKED: "kept until its referral is known",
        Status.AMBIGUOUS: "several referrals match; an operator decides",
    }.get(status, status.value)
    return f"{text} (resend)" if r.status == Status.DUPLICATE else text
