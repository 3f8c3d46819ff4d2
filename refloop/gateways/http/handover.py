"""Hand one inbound message to the shared intake; answer only once it has returned."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import structlog
from fastapi import Request

from refloop.gateways.http.problems import ApiError
from refloop.gateways.intake import Inbound, Intake, Result

log = structlog.get_logger()

RETRY_AFTER_SECONDS = 5


async def hand_over(request: Request, msg: Inbound) -> Result:
    """The event is durably in its loop's history or parked when this returns; otherwise the
    sender gets 503 and retries (the inbox row is kept and the retry is not a duplicate)."""
    intake: Intake = request.app.state.intake
    try:
        return await asyncio.wait_for(intake.receive(msg), timeout=request.app.state.handover_timeout)
    except Exception as err:
        log.warning("http_handover_failed", protocol=msg.protocol, message_type=msg.message_type, error=type(err).__name__)
        raise ApiError(
            503,
            "Workflow engine unavailable",
            "the event could not be handed to its referral loop; nothing was lost, retry later",
            slug="engine-unavailable",
            fhir_code="transient",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from err


def content_hash(data: Any) -> str:
    """Whitespace- and key-order-insensitive digest of a JSON body (of the text when it is not JSON)."""
    if isinstance(data, (dict, list)):
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def keep_rejected(request: Request, protocol: str, sender: str, message_type: str, raw: str, error: str, key: str = "") -> Result:
    """Keep a message we cannot act on in the inbox, keyed by its content: the same bad message
    again is a duplicate, a corrected one (even with the same id or event_id) is new."""
    msg = Inbound(protocol, sender, f"{key}/rejected-{content_hash(raw)}" if key else f"rejected-{content_hash(raw)}", message_type, raw, error=error)
    return await hand_over(request, msg)
