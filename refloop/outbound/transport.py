"""Carrying a message to the requester: FHIR RESTful PUT over HTTP, or HL7 v2 over MLLP.

Every failure is classified once, here, for both the delivery activity and the outbox relay:
`Refused` (the requester said no: HTTP 4xx, HL7 AE — resending the same thing cannot help)
or `Unavailable` (5xx, timeouts, refused connections, HL7 AR — try again later).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import hl7
import httpx
from hl7.mllp import open_hl7_connection

FHIR_JSON = "application/fhir+json"


class DeliveryError(Exception):
    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class Refused(DeliveryError):
    """Non-retryable: the requester rejected this message."""


class Unavailable(DeliveryError):
    """Retryable: the requester could not take it now."""


@dataclass
class Sent:
    channel: str  # "fhir" or "hl7"
    detail: str  # "HTTP 201", "MSA AA"
    status_code: int | None = None


def resource_url(base: str, resource_type: str, resource_id: str) -> str:
    return f"{base.rstrip('/')}/{resource_type}/{resource_id}"


async def put_resource(http: httpx.AsyncClient, base: str, resource, timeout: float) -> Sent:
    """PUT a FHIR resource at its id: idempotent, so a retry after a lost answer is harmless."""
    url = resource_url(base, resource.get_resource_type(), resource.id)
    try:
        resp = await http.put(
            url,
            content=resource.model_dump_json(exclude_none=True),
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            timeout=timeout,
        )
    except httpx.TimeoutException as err:
        raise Unavailable(f"no answer from {url} within {timeout:.1f}s ({type(err).__name__})") from err
    except httpx.HTTPError as err:
        raise Unavailable(f"cannot reach {url}: {type(err).__name__}: {err}") from err
    code = resp.status_code
    if code in (408, 425, 429):  # "try later" answers, though 4xx
        raise Unavailable(f"HTTP {code} from {url}", code)
    if 400 <= code < 500:
        raise Refused(f"HTTP {code} from {url}: {_problem(resp)}", code)
    if code >= 300:
        raise Unavailable(f"HTTP {code} from {url}", code)
    return Sent("fhir", f"HTTP {code}", code)


def _problem(resp: httpx.Response) -> str:
    """The gist of an OperationOutcome / problem+json / text error body."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict):
        issues = body.get("issue") or []
        if issues and isinstance(issues, list):
            return "; ".join(str(i.get("diagnostics") or i.get("details", {}).get("text") or i.get("code")) for i in issues)[:300]
        return str(body.get("detail") or body.get("title") or body)[:300]
    return str(body)[:300]


def mllp_address(endpoint: str) -> tuple[str, int]:
    """`host:port` or `mllp://host:port`."""
    parts = urlsplit(endpoint if "://" in endpoint else f"mllp://{endpoint}")
    if not parts.hostname or not parts.port:
        raise Refused(f"HL7 endpoint {endpoint!r} is not host:port")
    return parts.hostname, parts.port


async def send_mllp(endpoint: str, message: str, timeout: float) -> Sent:
    """Send one message and check its ACK: MSA-1 and that MSA-2 names our MSH-10."""
    host, port = mllp_address(endpoint)
    sent_id = str(hl7.parse(message).segment("MSH")(10))
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await open_hl7_connection(host, port, encoding="utf-8")
            try:
                writer.writemessage(message.rstrip("\r"))
                await writer.drain()
                ack = await reader.readmessage()
            finally:
                writer.close()
    except TimeoutError as err:
        raise Unavailable(f"no ACK from {host}:{port} within {timeout:.1f}s") from err
    except (OSError, asyncio.IncompleteReadError) as err:
        raise Unavailable(f"MLLP to {host}:{port} failed: {type(err).__name__}: {err}") from err
    try:
        msa = ack.segment("MSA")
    except KeyError as err:
        raise Unavailable(f"answer from {host}:{port} has no MSA segment") from err
    code, acked = str(msa(1)), str(msa(2))
    if acked != sent_id:
        raise Unavailable(f"ACK from {host}:{port} names message {acked!r}, not {sent_id!r}")
    if code in ("AA", "CA"):
        return Sent("hl7", f"MSA {code}")
    text = _ack_error(ack)
    # AE: the content was wrong; AR: rejected, per HL7 2.9 possibly for transient reasons.
    if code in ("AE", "CE"):
        raise Refused(f"HL7 {code} from {host}:{port}: {text}")
    raise Unavailable(f"HL7 {code} from {host}:{port}: {text}")


def _ack_error(ack: hl7.Message) -> str:
    texts = [str(ack.segment("MSA")(3))] if len(ack.segment("MSA")) > 3 else []
    try:
        for err in ack.segments("ERR"):
            texts.append(str(err))
    except KeyError:
        pass
    return "; ".join(t for t in texts if t) or "no error text"
