"""Operators drive loops from the terminal: `refloop list/show` read them, `close`, `resolve-hold`,
`reopen` and `redeliver` act through the workflow's validated updates; a rejection says why
and exits non-zero. The CLI runs in a thread (it has its own event loop) against the real server."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from refloop.cli.main import main as cli
from refloop.config import Settings
from refloop.domain import events as ev
from refloop.domain.loop import Loop
from refloop.domain.referral import PatientId
from refloop.gateways.dispatch import signal_event
from refloop.temporal import workflow_id
from tests.conftest import unique
from tests.factories import happy_path
from tests.receivers import FhirReceiver, eventually
from workers.main import build_worker


@pytest.fixture
def env(client, task_queue, store, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", str(store.engine.url))
    monkeypatch.setenv("REFLOOP_TEMPORAL_ADDRESS", client.service_client.config.target_host)
    monkeypatch.setenv("REFLOOP_TASK_QUEUE", task_queue)
    monkeypatch.setenv("COLUMNS", "200")


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    def call() -> int:
        try:
            return cli(list(argv))
        except SystemExit as exit:  # argparse refuses bad arguments this way
            return int(exit.code or 0)

    capsys.readouterr()
    code = await asyncio.to_thread(call)
    out, err = capsys.readouterr()
    return code, out, err


async def _stage(client, rid: str) -> str:
    return (await client.get_workflow_handle(workflow_id(rid)).query("state", result_type=Loop)).stage.value


async def test_operator_actions_and_rejections(env, client, task_queue, store, capsys):
    rid = unique()
    now = datetime.now(timezone.utc)
    async with FhirReceiver() as requester, build_worker(client, Settings(task_queue=task_queue), store):
        order, booking, _ = happy_path(rid, now, endpoint=requester.base)[:3]
        other = ev.Arrived(event_id=f"{rid}-arr", occurred_at=now, patient=PatientId(value="PID_1", issuer="OTHER"))
        for e in (order, booking, other):
            await signal_event(client, task_queue, rid, e)
        assert await eventually(lambda: _is(client, rid, "on_hold"))

        code, out, err = await run_cli(capsys, "reopen", rid, "--reason", "try")
        assert code == 2 and "rejected: loop is open (it is on_hold)" in err

        code, out, _ = await run_cli(capsys, "list", "--attention")
        assert code == 0 and rid in out and "on_hold" in out

        code, out, _ = await run_cli(capsys, "resolve-hold", rid, "--decision", "accept", "--reason", "desk checked the card", "--operator", "ana")
        assert code == 0 and "now arrived" in out
        code, _, err = await run_cli(capsys, "resolve-hold", rid, "--decision", "accept")
        assert code == 2 and "loop is not on hold (it is arrived)" in err

        code, out, err = await run_cli(capsys, "redeliver", rid, "--reason", "x")
        assert code == 2 and "nothing to redeliver" in err

        code, out, _ = await run_cli(capsys, "close", rid, "--reason", "patient withdrew consent", "--operator", "ana")
        assert code == 0 and "now cancelled" in out and "closed by ana: patient withdrew consent" in out
        # The no-result notice reaches the requester, then the loop is closed.
        assert await eventually(lambda: _is(client, rid, "closed"))
        notice = requester.accepted("DiagnosticReport")[-1]
        assert notice["status"] == "cancelled" and "patient withdrew consent" in notice["conclusion"]
        code, _, err = await run_cli(capsys, "close", rid, "--reason", "again")
        assert code == 2 and "already closed" in err

        code, out, _ = await run_cli(capsys, "reopen", rid, "--reason", "closed the wrong referral")
        assert code == 0 and "now arrived" in out

        code, out, _ = await run_cli(capsys, "list", "--state", "arrived")
        assert code == 0 and rid in out
        code, out, _ = await run_cli(capsys, "list", "--state", "scheduled")
        assert code == 0 and rid not in out

        code, out, _ = await run_cli(capsys, "show", rid)
        assert code == 0
        for text in ("waiting for", "the procedure to start", "deliveries", "status updates to the requester", "operator_reopen", "timeline"):
            assert text in out, text

    code, _, err = await run_cli(capsys, "close", "NO-SUCH-REFERRAL", "--reason", "x")
    assert code == 2 and "no running loop" in err
    code, _, err = await run_cli(capsys, "close", rid, "--reason", " ")
    assert code == 2 and "must not be empty" in err


async def _is(client, rid: str, stage: str) -> bool:
    return await _stage(client, rid) == stage
