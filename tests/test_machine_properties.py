"""Real feeds arrive out of order and repeat themselves: whatever the order and however
many repeats, a full loop's events end in the same closure."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from refloop.domain import machine as m
from refloop.domain.loop import Outcome, Stage
from refloop.domain.policy import Policy
from tests.factories import T0, acknowledged, delivered, happy_path

P = Policy()
RID = "PO-PROP"
WORLD = happy_path(RID)  # order .. final: what the outside world reports


def close_with_delivery(loop):
    """What follows in every run: we deliver, the requester acknowledges."""
    for e in (delivered(RID, T0 + timedelta(hours=9)), acknowledged(RID, T0 + timedelta(hours=10))):
        loop = m.apply(loop, e, e.occurred_at, P).loop
    return loop


def reference():
    loop = m.new_loop(RID)
    for e in WORLD:
        loop = m.apply(loop, e, e.occurred_at, P).loop
    return close_with_delivery(loop)


REFERENCE = reference()


@settings(max_examples=300, deadline=None)
@given(
    order=st.permutations(range(len(WORLD))),
    repeats=st.lists(st.integers(min_value=0, max_value=len(WORLD) - 1), max_size=12),
    positions=st.lists(st.integers(min_value=0, max_value=40), min_size=12, max_size=12),
)
def test_any_order_and_duplicates_end_in_the_same_closure(order, repeats, positions):
    sequence = [WORLD[i] for i in order]
    for k, i in enumerate(repeats):  # the same message again, anywhere
        sequence.insert(min(positions[k], len(sequence)), WORLD[i])
    loop = m.new_loop(RID)
    deliveries = 0
    for e in sequence:
        step = m.apply(loop, e, e.occurred_at, P)
        loop = step.loop
        deliveries += sum(isinstance(x, m.Deliver) for x in step.effects)
    assert loop.stage == Stage.REPORTED_FINAL
    assert deliveries >= 1  # the requester is always sent the result
    loop = close_with_delivery(loop)
    assert (loop.stage, loop.outcome) == (Stage.CLOSED, Outcome.COMPLETED)
    assert loop.report.model_dump(exclude={"issued_at"}) == REFERENCE.report.model_dump(exclude={"issued_at"})
    assert loop.performed_instances == REFERENCE.performed_instances
    assert loop.archived_instances == REFERENCE.archived_instances
    assert loop.referral == REFERENCE.referral
    assert not loop.open_anomalies
    assert len(loop.timeline) == len(sequence) + 2  # every input is on the timeline
    assert sum(not t.applied for t in loop.timeline) >= len(repeats)


@settings(max_examples=200, deadline=None)
@given(order=st.permutations(range(len(WORLD))))
def test_stage_never_moves_backwards_on_the_happy_path(order):
    from refloop.domain.loop import RANK

    loop = m.new_loop(RID)
    for i in order:
        before = RANK[loop.stage]
        loop = m.apply(loop, WORLD[i], WORLD[i].occurred_at, P).loop
        assert RANK[loop.stage] >= before
