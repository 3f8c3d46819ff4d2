"""The HL7 v2 / MLLP path of the throughput figure, plugged in when the gateway exists.

The harness runs the gateway as a `refloop dev` service (`async def serve(settings, stop)`,
found in DEV_SERVICES or given with `--mllp-service MODULE:FUNC`) in its own process,
bound to 127.0.0.1 on a free port, and sends each loop's HL7 messages over one MLLP
connection per loop in flight, each message only after the previous one's ACK. A loop counts
as done when every message got an AA: the gateway acknowledges only once Temporal has
durably accepted the event.
"""

from __future__ import annotations

import importlib
import importlib.util
from datetime import datetime, timezone

import hl7
from hl7.mllp import open_hl7_connection

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


# The HL7 part of a loop, shaped like the public samples (dcm4che / FHIR-Converter), re-keyed.
# {rid} placer order number, {acc} accession, {pid} patient ID, {ts} message time, {n} message no.
MESSAGES = [
    "MSH|^~\\&|BENCH_RIS|BENCH|REFLOOP|BENCH|{ts}||ORM^O01^ORM_O01|{rid}-{n}|P|2.5.1\r"
    "PID|||{pid}^^^BENCH||Bench^Patient||20000101|F\r"
    "PV1||O\r"
    "ORC|NW|{rid}|F{rid}||SC\r"
    "OBR|1|{rid}|F{rid}|CTHEAD^CT head^L|||{ts}|||||||||^Bench^Requester||{acc}|RP{rid}||||CT\r",
    "MSH|^~\\&|BENCH_RIS|BENCH|REFLOOP|BENCH|{ts}||SIU^S12^SIU_S12|{rid}-{n}|P|2.5.1\r"
    "SCH|{rid}|F{rid}||||BOOKED|||60|min|^^60^{ts}^{ts}||||||||||||||{rid}|F{rid}\r"
    "TQ1|||||||{ts}\r"
    "PID|||{pid}^^^BENCH||Bench^Patient||20000101|F\r"
    "RGS|1\r"
    "AIS|1||CTHEAD^CT head^L|{ts}\r",
    "MSH|^~\\&|BENCH_ADT|BENCH|REFLOOP|BENCH|{ts}||ADT^A04^ADT_A01|{rid}-{n}|P|2.5.1\r"
    "EVN|A04|{ts}\r"
    "PID|||{pid}^^^BENCH||Bench^Patient||20000101|F\r"
    "PV1||O|CT^^^BENCH\r",
    "MSH|^~\\&|BENCH_RPT|BENCH|REFLOOP|BENCH|{ts}||ORU^R01^ORU_R01|{rid}-{n}|P|2.5.1\r"
    "PID|||{pid}^^^BENCH||Bench^Patient||20000101|F\r"
    "OBR|1|{rid}|F{rid}|CTHEAD^CT head^L|||{ts}|||||||||||{acc}|||||||P\r"
    "OBX|1|TX|18782-3^Study observation^LN||Preliminary: no acute findings||||||P\r",
    "MSH|^~\\&|BENCH_RPT|BENCH|REFLOOP|BENCH|{ts}||ORU^R01^ORU_R01|{rid}-{n}|P|2.5.1\r"
    "PID|||{pid}^^^BENCH||Bench^Patient||20000101|F\r"
    "OBR|1|{rid}|F{rid}|CTHEAD^CT head^L|||{ts}|||||||||||{acc}|||||||F\r"
    "OBX|1|TX|18782-3^Study observation^LN||No acute findings||||||F\r",
]


def loop_messages(rid: str) -> list[str]:
    ts = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    return [m.format(rid=rid, acc=f"A-{rid}", pid=f"P-{rid}", ts=ts, n=n) for n, m in enumerate(MESSAGES, start=1)]


class MllpLoops:
    """Drives loops through the gateway; `drive(rid)` is True when every message got AA."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.negative: list[str] = []  # first few non-AA answers, to say why

    async def drive(self, rid: str) -> bool:
        reader, writer = await open_hl7_connection(self.host, self.port)
        try:
            for text in loop_messages(rid):
                writer.writemessage(hl7.parse(text))
                await writer.drain()
                ack = await reader.readmessage()
                code = str(ack.segment("MSA")[1])
                if code != "AA":
                    if len(self.negative) < 5:
                        self.negative.append(str(ack).replace("\r", " | "))
                    return False
            return True
        finally:
            writer.close()
            await writer.wait_closed()
