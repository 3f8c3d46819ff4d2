"""An HL7 v2 sender over MLLP (python-hl7's client streams), and reading the ACK it gets back.
Used by the demo and the tests."""

from __future__ import annotations

import asyncio

import hl7
from hl7.mllp import open_hl7_connection

from refloop.gateways.hl7.decode import decode_message


class Mllp:
    """One MLLP connection."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Mllp:
        return cls(*await open_hl7_connection(host, port))

    async def send(self, data: bytes, prefix: bytes = b"", timeout: float = 30) -> hl7.Message:
        """Frame `data` (after any raw `prefix` bytes), send it, and parse the ACK."""
        self.writer.write(prefix)
        self.writer.writeblock(data)
        await self.writer.drain()
        return ack_of(await asyncio.wait_for(self.reader.readblock(), timeout))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def send(port: int, data: bytes, host: str = "127.0.0.1") -> hl7.Message:
    """One message on its own connection; the ACK."""
    conn = await Mllp.open(port, host)
    try:
        return await conn.send(data)
    finally:
        await conn.close()


def ack_of(block: bytes) -> hl7.Message:
    return hl7.parse(decode_message(block).normalised)


def ack_code(ack: hl7.Message) -> str:
    """MSA-1: AA, AE or AR."""
    return str(ack.segment("MSA")[1])


def ack_text(ack: hl7.Message) -> str:
    """MSA-3, the receiver's words."""
    msa = ack.segment("MSA")
    return str(msa[3]) if len(msa) > 3 else ""
