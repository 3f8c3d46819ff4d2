"""The HL7 v2 / MLLP path of the throughput figure, plugged in when the gateway exists.

The harness runs the gateway as a `refloop dev` service (`async def serve(settings, stop)`,
found in DEV_SERVICES or given with `--mllp-service MODULE:FUNC`) in its own process,
bound to 127.0.0.1 on a free port, and sends each loop's HL7 messages over one MLLP
connection per loop in flight, each message only after the previous one's ACK (the gateway
acknowledges only once Temporal has durably accepted the event). A loop counts once its
state shows every message, as on the client path.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from datetime import datetime, timezone

import hl7
from hl7.mllp import open_hl7_connection

from bench.measure import wait_until
from bench.targets import Target
from refloop.domain.referral import PatientId
from refloop.store.repo import InboxStore, patient_key

GATEWAY_MODULE = "refloop.gateways.hl7"


def gateway_service(explicit: str = "") -> str | None:
    """`MODULE:FUNC` of the MLLP gateway service, or None when this build has none."""
    if explicit:
        return explicit
    if importlib.util.find_spec(GATEWAY_MODULE) is None:
        return None
    from refloop.cli.dev import DEV_SERVICES

    for spec in DEV_SERVICES:
        if spec.split(":")[0].startswith(GATEWAY_MODULE):
            return spec
    module = importlib.import_module(GATEWAY_MODULE)
    return f"{GATEWAY_MODULE}:serve" if hasattr(module, "serve") else None


def segment(name: str, fields: dict[int, str]) -> str:
    """`NAME|...` with each field at its HL7 position (MSH counts its separator as field 1)."""
    first = 2 if name == "MSH" else 1
    last = max(fields)
    values = [fields.get(i, "") for i in range(first, last + 1)]
    return "|".join([name, *values]) if name != "MSH" else "MSH|" + "|".join(values)


def _msh(app: str, ts: str, kind: str, control_id: str) -> str:
    return segment("MSH", {2: "^~\\&", 3: app, 4: "BENCH", 5: "REFLOOP", 6: "BENCH", 7: ts, 9: kind, 10: control_id, 11: "P", 12: "2.5.1"})


def loop_messages(rid: str) -> list[str]:
    """The HL7 part of one loop, shaped like the public samples (dcm4che, FHIR-Converter) and
    re-keyed: order, booking, arrival, preliminary and final report. The placer order number
    (ORC-2, SCH-26, OBR-2) is the referral's ID; no names or real identifiers."""
    ts = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    acc, filler = f"A-{rid}", f"F-{rid}"
    pid = segment("PID", {3: f"P-{rid}^^^BENCH", 5: "Bench^Patient", 7: "20000101", 8: "F"})
    service = "CTHEAD^CT head^L"
    report = lambda status, text: [  # noqa: E731
        pid,
        segment("OBR", {1: "1", 2: rid, 3: filler, 4: service, 7: ts, 18: acc, 25: status}),
        segment("OBX", {1: "1", 2: "TX", 3: "18782-3^Study observation^LN", 5: text, 11: status}),
    ]
    bodies = [
        ("BENCH_RIS", "ORM^O01^ORM_O01", [
            pid,
            segment("PV1", {2: "O"}),
            segment("ORC", {1: "NW", 2: rid, 3: filler, 5: "SC"}),
            segment("OBR", {1: "1", 2: rid, 3: filler, 4: service, 18: acc, 19: f"RP-{rid}", 24: "CT"}),
        ]),
        ("BENCH_RIS", "SIU^S12^SIU_S12", [
            segment("SCH", {1: f"AP-{rid}", 2: f"AF-{rid}", 6: "BOOKED", 9: "60", 10: "min", 11: f"^^60^{ts}", 26: rid, 27: filler}),
            segment("TQ1", {7: ts}),
            pid,
            segment("RGS", {1: "1"}),
            segment("AIS", {1: "1", 3: service, 4: ts}),
        ]),
        ("BENCH_ADT", "ADT^A04^ADT_A01", [segment("EVN", {1: "A04", 2: ts}), pid, segment("PV1", {2: "O", 3: "CT^^^BENCH"})]),
        ("BENCH_RPT", "ORU^R01^ORU_R01", report("P", "Preliminary: no acute findings")),
        ("BENCH_RPT", "ORU^R01^ORU_R01", report("F", "No acute findings")),
    ]
    return ["\r".join([_msh(app, ts, kind, f"{rid}-{n}"), *segs]) + "\r" for n, (app, kind, segs) in enumerate(bodies, start=1)]


MESSAGES_PER_LOOP = 5
ARRIVAL = 2  # index of the ADT^A04 in loop_messages()


class MllpLoops:
    """Drives loops through the gateway, measured like the client path: a loop is done when
    every message got an AA and the loop's state shows them all (queried through `target`)."""

    def __init__(self, port: int, target: Target, inbox: InboxStore, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.target = target
        self.inbox = inbox
        self.negative: list[str] = []  # first few non-AA answers, to say why

    async def _booked(self, rid: str) -> int:
        key = patient_key(PatientId(value=f"P-{rid}", issuer="BENCH"))
        return len(await asyncio.to_thread(self.inbox.referrals_awaiting_arrival, key))

    async def drive(self, rid: str) -> bool:
        messages = loop_messages(rid)
        reader, writer = await open_hl7_connection(self.host, self.port)
        try:
            for n, text in enumerate(messages):
                if n == ARRIVAL:
                    # An arrival names only the patient and binds to a loop that the read model
                    # shows as booked; at a desk it comes well after the booking. Sent right
                    # after the booking's ACK it races the worker and is parked (README,
                    # Performance), so it waits for what the gateway itself will look up.
                    if await wait_until(lambda: self._booked(rid), 1, timeout=120) < 1:
                        return False
                if not await self._send(reader, writer, text):
                    return False
        finally:
            writer.close()
            await writer.wait_closed()
        # The placer order number (ORC-2, no assigning system) is the referral's ID.
        return await wait_until(lambda: self.target.settled(rid), len(messages), timeout=120) >= len(messages)

    async def _send(self, reader, writer, text: str) -> bool:
        writer.writemessage(hl7.parse(text))
        await writer.drain()
        ack = await reader.readmessage()
        if str(ack.segment("MSA")[1]) == "AA":
            return True
        if len(self.negative) < 5:
            self.negative.append(str(ack).replace("\r", " | "))
        return False
