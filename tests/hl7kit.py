"""Shared by the HL7 tests: a real stack per test (own Temporal namespace, SQL store, worker,
MLLP listener on a free port), a real MLLP client, and message variants built from the samples."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

import hl7
import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from refloop.config import Settings
from refloop.demo.hl7client import Mllp, ack_code, ack_of, send  # noqa: F401 (shared with the demo)
from refloop.demo.rekey import rekey_hl7
from refloop.domain.loop import Loop
from refloop.gateways.hl7.receiver import Hl7Receiver
from refloop.gateways.hl7.server import MllpServer
from refloop.gateways.intake import Intake
from refloop.store.db import make_engine
from refloop.store.repo import InboxStore, Store
from refloop.store.tables import InboxRow
from refloop.temporal import SEARCH_ATTRIBUTES
from tests.conftest import SAMPLES
from tests.helpers import wait_for
from workers.main import build_worker

HL7_SAMPLES = SAMPLES / "hl7v2"
VT, FS_CR = b"\x0b", b"\x1c\r"


async def isolated_client(temporal_env) -> Client:
    """A client on a fresh namespace of the session's dev server: the samples reuse order
    numbers, and workflow IDs derive from them, so each test gets a world of its own."""
    base = temporal_env.client
    ns = f"hl7-{uuid.uuid4().hex[:10]}"
    await base.workflow_service.register_namespace(
        RegisterNamespaceRequest(namespace=ns, workflow_execution_retention_period=Duration(seconds=86400))
    )
    await base.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=ns,
            search_attributes={k.name: IndexedValueType.ValueType(k.indexed_value_type) for k in SEARCH_ATTRIBUTES},
        )
    )
    return await Client.connect(base.service_client.config.target_host, namespace=ns, data_converter=pydantic_data_converter)


@dataclass
class Stack:
    client: Client
    store: Store
    port: int

    @property
    def inbox(self) -> InboxStore:
        return InboxStore(self.store.engine)

    def rows(self) -> list[InboxRow]:
        return list(reversed(self.inbox.list(limit=1000)))

    async def loop(self, referral_id: str, until=lambda lp: True, timeout: float = 15.0) -> Loop:
        """The loop's live state (query `state`), once `until` holds (or the timeout passes)."""
        return await wait_for(self.client, referral_id, until, timeout)

    async def persisted(self, predicate, timeout: float = 15.0) -> bool:
        """Wait until the SQL read model satisfies `predicate(store)`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not await asyncio.to_thread(predicate, self.store):
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True


@pytest.fixture
async def stack(temporal_env, tmp_path):
    client = await isolated_client(temporal_env)
    store = Store(make_engine(f"sqlite:///{tmp_path / 'refloop.db'}"))
    task_queue = f"tq-{uuid.uuid4()}"
    server = MllpServer(Hl7Receiver(Intake(client, store, task_queue)))
    port = await server.start("127.0.0.1", 0)
    try:
        async with build_worker(client, Settings(task_queue=task_queue), store):
            yield Stack(client, store, port)
    finally:
        await server.stop()


# --- the sending side: refloop.demo.hl7client ----------------------------------------------------


def err_text(ack: hl7.Message) -> str:
    """ERR-8 (the human reason) of the ACK's first ERR segment."""
    return ack.segment("ERR").extract_field(1, 8)


# --- messages ------------------------------------------------------------------------------------


def raw(name: str) -> bytes:
    """A sample file, byte for byte."""
    return (HL7_SAMPLES / name).read_bytes()


def variant(name: str, changes: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> bytes:
    """A sample re-keyed: `changes` maps python-hl7 accessors ("ORC.F2", "OBR2.F25") to new
    field values; `drop` removes segments by ID. Sent back in the sample's own charset."""
    return rekey_hl7(raw(name), changes, drop, strict=False)


def sample_names() -> list[str]:
    return sorted(p.relative_to(HL7_SAMPLES).as_posix() for p in Path(HL7_SAMPLES).glob("*/*.hl7"))
