"""Histories recorded from earlier workflow code must replay on today's code.

If this fails after a change to workflows/referral.py, the change is not replay-safe for
running loops: guard it with `workflow.patched(...)` (and record a new history beside the
old ones with `python -m tests.histories.record`), never by re-recording alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.referral import ReferralWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_recorded_histories():
    assert len(HISTORIES) >= 2


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path):
    history = WorkflowHistory.from_json(f"referral-{path.stem}", path.read_text())
    replayer = Replayer(workflows=[ReferralWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
