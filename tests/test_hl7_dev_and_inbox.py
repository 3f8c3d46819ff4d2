"""`refloop dev` runs the MLLP listener (DEV_SERVICES); `refloop inbox` shows what it received."""

from __future__ import annotations

import asyncio
import socket

import pytest
from rich.console import Console

from refloop.cli import dev, inbox
from refloop.cli.main import main
from refloop.config import Settings
from refloop.domain.loop import Stage
from refloop.store.db import make_engine
from refloop.store.repo import InboxStore, Store
from tests.hl7kit import ack_code, isolated_client, raw, send

OMI = "dcm4che/OMI_O23-ImagingOrder.hl7"
A31 = "dcm4che/ADT_A31-UpdatePersonInfo.hl7"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_refloop_dev_serves_mllp_and_the_inbox_shows_it(temporal_env, tmp_path, monkeypatch):
    assert "refloop.gateways.hl7.server:serve" in dev.DEV_SERVICES
    client = await isolated_client(temporal_env)
    monkeypatch.setenv("REFLOOP_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = Settings(
        temporal_address=client.service_client.config.target_host,
        namespace=client.namespace,
        task_queue="tq-dev",
        mllp_port=_free_port(),
        http_port=_free_port(),  # the HTTP gateway is a dev service too
    )
    stop = asyncio.Event()
    # The whole dev stack (worker + every dev service) as `refloop dev` runs it.
    stack = asyncio.create_task(dev.run_stack(settings, stop))
    try:
        for _ in range(100):
            try:
                ack = await send(settings.mllp_port, raw(OMI))
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert ack_code(ack) == "AA"
        assert ack_code(await send(settings.mllp_port, raw(A31))) == "AR"
        store = Store(make_engine(settings.db_url))
        for _ in range(100):
            loop = store.get_loop("PlacerOrderNumberImagingServiceRequest")
            if loop and loop.stage == Stage.ORDERED:
                break
            await asyncio.sleep(0.1)
        assert loop and loop.stage == Stage.ORDERED  # the worker of the dev stack ran it
    finally:
        stop.set()
        await asyncio.wait_for(stack, 30)

    out = _run_cli(monkeypatch, ["inbox"])
    assert "OMI^O23" in out and "accepted" in out and "PlacerOrderNumberImagingServiceRequest" in out
    assert "ADT^A31" in out and "rejected" in out and "MSH-9: ADT^A31 is not supported" in out
    for phi in ("Smith", "Lucy", "PID_1", "20141014"):  # no patient data in the listing
        assert phi not in out
    rejected = _run_cli(monkeypatch, ["inbox", "--rejected"])
    assert "ADT^A31" in rejected and "accepted" not in rejected
    (row,) = InboxStore(store.engine).list("rejected")
    assert f"│ {row.id} " in rejected
    shown = _run_cli(monkeypatch, ["inbox", "--show", str(row.id)])
    assert "PID|||PID_1^^^ADT1||Smith^Lucy^Mark" in shown  # the raw message, one segment a line
    with pytest.raises(SystemExit):
        main(["inbox", "--rejected", "--parked"])  # one filter at a time
    assert main(["inbox", "--show", "99999"]) == 2  # CliError: printed, exit 2


def _run_cli(monkeypatch, argv: list[str]) -> str:
    console = Console(width=400, record=True, force_terminal=False)
    monkeypatch.setattr(inbox, "console", console)
    assert main(argv) == 0
    return console.export_text()
