"""SLA policy: how long each stage may wait, per priority, and how escalation is graded.

Loaded from TOML and validated at load time; defaults follow DOMAIN.md §5.
"""

from __future__ import annotations

import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(value: object) -> object:
    """Accept "90s", "30m", "2h", "3d", "1w" (and pass anything else on to pydantic)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

PRIORITIES = ("stat", "urgent", "routine")
ESCALATION_LEVELS = ("remind", "escalate", "incident")


class PerPriority(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stat: Duration
    urgent: Duration
    routine: Duration

    def for_priority(self, priority: str) -> timedelta:
        return getattr(self, priority)


def _same(d: str) -> PerPriority:
    return PerPriority(stat=d, urgent=d, routine=d)  # type: ignore[arg-type]


class StageTargets(BaseModel):
    """How long a loop may stay in each stage before it is stale."""

    model_config = ConfigDict(extra="forbid")
    awaiting_order: PerPriority = _same("24h")  # an early event started the loop, no order yet
    booking: PerPriority = PerPriority(stat="1h", urgent="1d", routine="14d")  # type: ignore[arg-type]
    procedure_start: PerPriority = PerPriority(stat="30m", urgent="1h", routine="2h")  # type: ignore[arg-type]
    procedure_end: PerPriority = _same("4h")
    archive: PerPriority = _same("1h")
    final_report: PerPriority = PerPriority(stat="1h", urgent="4h", routine="48h")  # type: ignore[arg-type]
    delivery: PerPriority = _same("15m")
    acknowledgment: PerPriority = _same("72h")
    identity_hold: PerPriority = _same("1h")


class DeliveryRetry(BaseModel):
    """How result delivery retries (Temporal retry policy of the delivery activity)."""

    model_config = ConfigDict(extra="forbid")
    attempt_timeout: Duration = timedelta(seconds=30)  # one attempt, incl. a hanging endpoint
    first_retry: Duration = timedelta(seconds=2)
    backoff: float = 2.0
    max_retry_interval: Duration = timedelta(minutes=5)
    # 12 attempts span ~24 min: past the 15 min delivery target, so "remind" fires first.
    max_attempts: int = 12

    @model_validator(mode="after")
    def _check(self) -> DeliveryRetry:
        if self.attempt_timeout <= timedelta(0) or self.first_retry <= timedelta(0):
            raise ValueError("delivery.attempt_timeout and delivery.first_retry must be positive")
        if self.max_retry_interval < self.first_retry:
            raise ValueError("delivery.max_retry_interval must be at least delivery.first_retry")
        if self.backoff < 1 or self.max_attempts < 1:
            raise ValueError("delivery.backoff must be >= 1 and delivery.max_attempts >= 1")
        return self


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arrival_grace: Duration = timedelta(minutes=30)
    no_show_closes: bool = True
    critical_acknowledgment: Duration = timedelta(hours=1)
    # Offsets after a stage's deadline at which remind, escalate, incident fire.
    escalation_offsets: list[Duration] = [timedelta(0), timedelta(minutes=30), timedelta(hours=2)]
    amendment_window: Duration = timedelta(days=30)
    sweep_interval: Duration = timedelta(minutes=5)
    delivery: DeliveryRetry = DeliveryRetry()
    stages: StageTargets = StageTargets()

    @model_validator(mode="after")
    def _check(self) -> Policy:
        if len(self.escalation_offsets) != len(ESCALATION_LEVELS):
            raise ValueError(f"escalation_offsets needs {len(ESCALATION_LEVELS)} values (remind, escalate, incident)")
        if self.escalation_offsets != sorted(self.escalation_offsets):
            raise ValueError("escalation_offsets must not decrease")
        for name in StageTargets.model_fields:
            for prio in PRIORITIES:
                if getattr(getattr(self.stages, name), prio) <= timedelta(0):
                    raise ValueError(f"stages.{name}.{prio} must be positive")
        return self


class PolicyError(ValueError):
    """A policy file that cannot be used; the message says where and why."""


def load_policy(path: str | Path | None) -> Policy:
    if not path:
        return Policy()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise PolicyError(f"policy file {path} does not exist") from err
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"policy file {path} is not valid TOML: {err}") from err
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
        )
        raise PolicyError(f"policy file {path} is invalid: {problems}") from err
