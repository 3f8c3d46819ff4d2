"""What ReferralWorkflow takes, carries across continue-as-new, and answers.

These live outside workflows/referral.py and are imported passed through: the sandbox
re-executes the workflow module for every workflow it starts, and would rebuild these
pydantic classes (schemas, validators) each time.
"""

from __future__ import annotations

from pydantic import BaseModel

from refloop.domain.loop import Loop, Outcome, Stage
from refloop.domain.policy import Policy


class Carried(BaseModel):
    """What continue-as-new hands to the next run."""

    loop: Loop
    timeline_persisted: int = 0
    milestone_seq: int = 0
    delivery_seq: int = 0
    search_attributes: dict[str, str] = {}


class ReferralInput(BaseModel):
    referral_id: str
    policy: Policy = Policy()
    carried: Carried | None = None


class LoopSummary(BaseModel):
    referral_id: str
    stage: Stage
    outcome: Outcome | None = None
    reason: str = ""
    events: int = 0
    escalations: int = 0
    needs_attention: bool = False
