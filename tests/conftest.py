"""Shared fixtures: a real Temporal dev server (time skipping available), a real SQL store."""

from __future__ import annotations

import os
import uuid

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from refloop.demo.samples import SamplesMissing, candidates, find_samples
from refloop.devserver import find_binary
from refloop.store.db import make_engine
from refloop.store.repo import Store
from refloop.temporal import SEARCH_ATTRIBUTES

try:  # ../shared/samples beside the repository, or $REFLOOP_SAMPLES (CI clones next to a copy)
    SAMPLES = find_samples()
except SamplesMissing:
    SAMPLES = candidates()[0]  # tests that read samples fail with the path they looked at

PG_URL = os.environ.get("REFLOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
async def temporal_env():
    """One real dev server for the session; workflows started through `temporal_env.client`
    get per-workflow time skipping, so multi-day timers fire in about a second."""
    env = await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true", "--log-level", "error"],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def client(temporal_env) -> Client:
    """A plain client: time passes normally for workflows it starts."""
    cfg = temporal_env.client.config()
    return await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=cfg["namespace"],
        data_converter=pydantic_data_converter,
    )


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(make_engine(f"sqlite:///{tmp_path / 'refloop.db'}"))


def unique(prefix: str = "PO") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
