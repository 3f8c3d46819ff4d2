"""The MLLP listener (asyncio, python-hl7's hl7.mllp streams).

Each connection is served in its own task, one message at a time (MLLP senders wait for the
ACK before the next message). Framing is tolerant: bytes before a frame's start block are
skipped (garbage between frames), a frame without a start block is still read, and nothing a
sender does ends the listener; an oversized or half-sent frame ends only its connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server
from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from refloop.gateways.hl7.receiver import Hl7Receiver

log = structlog.get_logger()

FRAME_END = END_BLOCK + CARRIAGE_RETURN
MAX_FRAME = 32 * 1024 * 1024  # reports can carry PDFs


def unframe(block: bytes) -> tuple[bytes, int]:
    """(message, bytes skipped) from what was read up to and including <FS><CR>."""
    if block.endswith(FRAME_END):
        block = block[: -len(FRAME_END)]
    start = block.rfind(START_BLOCK)
    if start < 0:
        return block, 0
    return block[start + 1 :], start


class MllpServer:
    def __init__(self, receiver: Hl7Receiver, max_frame: int = MAX_FRAME):
        self.receiver = receiver
        self.max_frame = max_frame
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._idle: set[asyncio.Task[Any]] = set()  # waiting for their next frame
        self._stopping = False

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (pass 0 for a free one)."""
        self._server = await start_hl7_server(self._connected, host, port, limit=self.max_frame)
        bound = self._server.sockets[0].getsockname()[1]
        log.info("mllp_listening", host=host, port=bound)
        return bound

    async def stop(self, grace: float = 10.0) -> None:
        """Stop listening; idle connections end now, a message being handled gets its ACK first."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in list(self._idle):
            task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("mllp_stopped")

    def _connected(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        # A plain callback (not a coroutine) so that we own, and can stop, the connection task.
        task = asyncio.get_running_loop().create_task(self._serve_connection(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve_connection(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        peer = str(writer.get_extra_info("peername"))
        log.info("mllp_connected", peer=peer)
        try:
            while not self._stopping:
                self._idle.add(me)
                try:
                    block = await reader.readuntil(FRAME_END)
                except asyncio.IncompleteReadError as err:
                    if err.partial.strip():
                        log.warning("mllp_incomplete_frame", peer=peer, bytes=len(err.partial))
                    return
                except asyncio.LimitOverrunError:
                    log.warning("mllp_frame_too_large", peer=peer, limit=self.max_frame)
                    return
                finally:
                    self._idle.discard(me)
                message, skipped = unframe(block)
                if skipped:
                    log.info("mllp_garbage_skipped", peer=peer, bytes=skipped)
                if not message.strip():
                    continue  # an empty frame (keep-alive) needs no answer
                writer.writeblock(await self.receiver.handle(message))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            log.info("mllp_disconnected", peer=peer)


async def serve(settings, stop: asyncio.Event) -> None:
    """`refloop dev` service: listen on settings.bind_host:settings.mllp_port until `stop`."""
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    from refloop.gateways.intake import Intake
    from refloop.store.db import make_engine
    from refloop.store.repo import Store

    # Lazy: the listener comes up (and answers AE) even while Temporal is still starting.
    client = await Client.connect(
        settings.temporal_address, namespace=settings.namespace, data_converter=pydantic_data_converter, lazy=True
    )
    intake = Intake(client, Store(make_engine(settings.db_url)), settings.task_queue, settings.policy())
    server = MllpServer(Hl7Receiver(intake, settings.hl7_processing_ids.split(","), settings.hl7_requester_endpoints()))
    await server.start(settings.bind_host, settings.mllp_port)
    try:
        await stop.wait()
    finally:
        await server.stop()
