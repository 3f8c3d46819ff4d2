"""The loop's rules, pure: every state and exception of DOMAIN.md §1-2, out-of-order and
repeated input, deadlines. No server needed; these run in milliseconds."""

from __future__ import annotations

from datetime import timedelta

import pytest

from refloop.domain import events as ev
from refloop.domain import machine as m
from refloop.domain.loop import Loop, Outcome, Stage
from refloop.domain.policy import Policy
from refloop.domain.referral import Appointment, PatientId
from tests.factories import PATIENT, T0, acknowledged, delivered, happy_path

P = Policy()
RID = "PO-1"


def run(events, loop: Loop | None = None) -> tuple[Loop, list]:
    loop = loop or m.new_loop(RID)
    effects: list = []
    for e in events:
        step = m.apply(loop, e, e.occurred_at, P)
        loop, effects = step.loop, effects + step.effects
    return loop, effects


def at(hours: float):
    return T0 + timedelta(hours=hours)


def test_happy_path_walks_every_stage_and_closes_completed():
    stages = []
    loop = m.new_loop(RID)
    for e in happy_path(RID) + [delivered(RID, at(5.1)), acknowledged(RID, at(6))]:
        loop = m.apply(loop, e, e.occurred_at, P).loop
        stages.append(loop.stage)
    assert stages == [
        Stage.ORDERED, Stage.SCHEDULED, Stage.ARRIVED, Stage.IN_PROGRESS, Stage.ACQUIRED,
        Stage.ARCHIVED, Stage.REPORTED_PRELIMINARY, Stage.REPORTED_FINAL, Stage.DELIVERED, Stage.CLOSED,
    ]
    assert loop.outcome == Outcome.COMPLETED
    assert all(t.applied for t in loop.timeline)


def test_final_report_asks_for_delivery_and_milestones_along_the_way():
    _, effects = run(happy_path(RID))
    assert [e for e in effects if isinstance(e, m.Deliver)] == [m.Deliver(what="result", version=1)]
    milestones = [e.milestone for e in effects if isinstance(e, m.NotifyRequester)]
    assert milestones == ["accepted", "booked", "arrived", "performed", "report_available", "report_available"]


def test_repeated_event_id_is_a_noop_but_recorded():
    events = happy_path(RID)
    once, _ = run(events)
    twice, effects = run(events + events)
    assert twice.stage == once.stage and twice.report == once.report
    dupes = [t for t in twice.timeline if not t.applied]
    assert len(dupes) == len(events) and all("duplicate" in t.note for t in dupes)
    assert len([e for e in effects if isinstance(e, m.Deliver)]) == 1


def test_early_events_move_to_latest_truthful_state_and_note_it():
    order, booking, arrival, start, done, archived, prelim, final = happy_path(RID)
    loop, _ = run([order, booking, done, arrival])  # MPPS completed before arrival and before start
    assert loop.stage == Stage.ACQUIRED
    assert "early" in loop.timeline[2].note
    assert loop.timeline[3].note.startswith("recorded; loop already at acquired")
    loop, _ = run([order, final, archived])  # report before archive
    assert loop.stage == Stage.REPORTED_FINAL and loop.archived_instances == 120


def test_preliminary_after_final_never_overwrites_it():
    order, *_, prelim, final = happy_path(RID)
    loop, _ = run([order, final, prelim])
    assert loop.stage == Stage.REPORTED_FINAL and loop.report.status == "final"
    assert loop.timeline[-1].applied is False and "preliminary after final" in loop.timeline[-1].note


def test_event_for_a_cancelled_loop_is_an_anomaly_not_an_error():
    order = happy_path(RID)[0]
    cancel = ev.ReferralCancelled(event_id="c", occurred_at=at(1), reason="requester")
    mpps = ev.ProcedureStarted(event_id="mpps", occurred_at=at(2), mpps_uid="1.2")
    loop, _ = run([order, cancel, mpps])
    assert loop.stage == Stage.CANCELLED and loop.needs_attention
    assert loop.anomalies[-1].code == "event_after_closure"


def test_no_show_reported_by_scheduler():
    order, booking = happy_path(RID)[:2]
    loop, effects = run([order, booking, ev.DidNotAttend(event_id="dna", occurred_at=at(3))])
    assert loop.stage == Stage.DID_NOT_ATTEND and loop.outcome == Outcome.DID_NOT_ATTEND
    assert m.Deliver(what="exception", version=0) in effects
    loop, _ = run([delivered(RID, at(3.1)).model_copy(update={"what": "exception"})], loop)
    assert loop.stage == Stage.CLOSED and loop.outcome == Outcome.DID_NOT_ATTEND


@pytest.mark.parametrize(
    ("code", "stage", "outcome"),
    [
        ("110503", Stage.NOT_PERFORMED, Outcome.NOT_PERFORMED),  # allergy to contrast
        ("110508", Stage.NOT_PERFORMED, Outcome.NOT_PERFORMED),  # pregnant
        ("110505", Stage.NOT_PERFORMED, Outcome.NOT_PERFORMED),  # refused
        ("110515", Stage.NOT_PERFORMED, Outcome.NOT_PERFORMED),  # condition
        ("110507", Stage.DID_NOT_ATTEND, Outcome.DID_NOT_ATTEND),
        ("110510", Stage.CANCELLED, Outcome.DUPLICATE),
    ],
)
def test_mpps_discontinued_reasons_map_to_outcomes(code, stage, outcome):
    order, booking, arrival, start = happy_path(RID)[:4]
    stop = ev.ProcedureDiscontinued(event_id="d", occurred_at=at(2.2), mpps_uid=start.mpps_uid, reason_code=code)
    loop, _ = run([order, booking, arrival, start, stop])
    assert (loop.stage, loop.outcome) == (stage, outcome)
    assert loop.outcome_reason  # the reason is kept


def test_wrong_worklist_entry_returns_to_arrived_and_flags_operator():
    order, booking, arrival, start = happy_path(RID)[:4]
    stop = ev.ProcedureDiscontinued(event_id="d", occurred_at=at(2.2), mpps_uid=start.mpps_uid, reason_code="110514")
    loop, _ = run([order, booking, arrival, start, stop])
    assert loop.stage == Stage.ARRIVED and loop.outcome is None and loop.needs_attention
    assert loop.anomalies[-1].code == "wrong_worklist_entry"


def test_unable_to_perform_and_discontinued_after_start():
    order, booking, arrival, start = happy_path(RID)[:4]
    utp = ev.UnableToPerform(event_id="u", occurred_at=at(1), reason="patient pregnant")
    loop, _ = run([order, booking, utp])
    assert loop.stage == Stage.NOT_PERFORMED and loop.outcome_reason == "patient pregnant"
    partial = ev.ProcedureDiscontinued(event_id="d", occurred_at=at(2.2), mpps_uid=start.mpps_uid, reason_code="110501", instance_count=12)
    loop, _ = run([order, booking, arrival, start, partial])
    assert loop.stage == Stage.NOT_PERFORMED and "partially performed" in loop.outcome_reason


def test_duplicate_order_points_at_surviving_referral():
    order = happy_path(RID)[0]
    dup = ev.ReferralCancelled(event_id="c", occurred_at=at(1), reason="duplicate", surviving_referral="PO-0")
    loop, effects = run([order, dup])
    assert (loop.stage, loop.outcome, loop.surviving_referral) == (Stage.CANCELLED, Outcome.DUPLICATE, "PO-0")
    assert "PO-0" in loop.outcome_reason and any(isinstance(e, m.Deliver) for e in effects)


def test_cancelled_before_acquisition_by_appointment_or_order():
    order, booking = happy_path(RID)[:2]
    loop, _ = run([order, booking, ev.AppointmentCancelled(event_id="s15", occurred_at=at(1))])
    assert (loop.stage, loop.outcome) == (Stage.CANCELLED, Outcome.CANCELLED)
    loop, _ = run([order, ev.ReferralCancelled(event_id="ca", occurred_at=at(1), reason="clinical")])
    assert (loop.stage, loop.outcome) == (Stage.CANCELLED, Outcome.CANCELLED)


def test_amendment_after_closure_reopens_delivery_and_needs_new_ack():
    events = happy_path(RID) + [delivered(RID, at(5.1)), acknowledged(RID, at(6))]
    loop, _ = run(events)
    assert loop.stage == Stage.CLOSED
    amend = ev.ReportRevised(event_id="amend", occurred_at=at(7), revision="amended", conclusion="addendum")
    loop, effects = run([amend], loop)
    assert loop.stage == Stage.REPORTED_FINAL and loop.outcome is None and loop.report.version == 2
    assert m.Deliver(what="result", version=2) in effects
    # An acknowledgment of the old version does not close it.
    loop, _ = run([acknowledged(RID, at(7.5), version=1)], loop)
    assert loop.stage == Stage.REPORTED_FINAL
    loop, _ = run([delivered(RID, at(7.6), version=2), acknowledged(RID, at(8), version=2)], loop)
    assert loop.stage == Stage.CLOSED and loop.outcome == Outcome.COMPLETED


@pytest.mark.parametrize("revision", ["corrected", "appended"])
def test_corrected_and_appended_also_redeliver(revision):
    loop, _ = run(happy_path(RID) + [delivered(RID, at(5.1))])
    loop, effects = run([ev.ReportRevised(event_id="r", occurred_at=at(6), revision=revision)], loop)
    assert loop.report.status == revision and m.Deliver(what="result", version=2) in effects


def test_withdrawn_report_entered_in_error_is_retracted_then_closed_in_error():
    loop, _ = run(happy_path(RID) + [delivered(RID, at(5.1))])
    loop, effects = run([ev.ReportWithdrawn(event_id="w", occurred_at=at(6), reason="entered_in_error", note="wrong patient")], loop)
    assert loop.stage == Stage.ENTERED_IN_ERROR and m.Deliver(what="retraction", version=1) in effects
    retraction = ev.ResultDelivered(event_id="rd", occurred_at=at(6.1), what="retraction", report_version=1)
    loop, _ = run([retraction], loop)
    assert (loop.stage, loop.outcome) == (Stage.CLOSED, Outcome.ENTERED_IN_ERROR)


def test_withdrawn_report_cancelled_reopens_for_a_new_report():
    loop, _ = run(happy_path(RID) + [delivered(RID, at(5.1))])
    loop, effects = run([ev.ReportWithdrawn(event_id="w", occurred_at=at(6), reason="cancelled")], loop)
    assert loop.stage == Stage.ARCHIVED and m.Deliver(what="retraction", version=1) in effects
    loop, _ = run([ev.ReportIssued(event_id="f2", occurred_at=at(8), status="final")], loop)
    assert loop.stage == Stage.REPORTED_FINAL


def test_identity_mismatch_at_arrival_holds_for_operator():
    order, booking, _, start = happy_path(RID)[:4]
    other = PatientId(value=PATIENT.value, issuer="OTHER")  # same ID, other issuer: another patient
    loop, _ = run([order, booking, ev.Arrived(event_id="a", occurred_at=at(1.9), patient=other), start])
    assert loop.stage == Stage.ON_HOLD and loop.needs_attention and loop.hold
    assert loop.hold.resume_stage == Stage.IN_PROGRESS  # events still count while held
    assert m.validate_command(loop, ev.ReopenLoop(reason="x")) is not None
    resumed = m.command(loop, ev.ResolveIdentityHold(decision="accept", operator="op"), at(2.5), P).loop
    assert resumed.stage == Stage.IN_PROGRESS and resumed.hold is None
    rejected = m.command(loop, ev.ResolveIdentityHold(decision="reject"), at(2.5), P).loop
    assert rejected.stage == Stage.SCHEDULED


def test_patient_merge_updates_identifier():
    order = happy_path(RID)[0]
    new = PatientId(value="PID_9", issuer="ADT1")
    loop, _ = run([order, ev.PatientMerged(event_id="m", occurred_at=at(1), old=PATIENT, new=new)])
    assert loop.referral.patient and loop.referral.patient.id == new


def test_procedure_mismatch_travels_with_result():
    order, booking, arrival, start = happy_path(RID)[:4]
    wrong = start.model_copy(update={"procedure_code": "MRBRAIN", "event_id": "w"})
    loop, _ = run([order, booking, arrival, wrong])
    assert loop.stage == Stage.IN_PROGRESS
    assert [a.code for a in loop.anomalies] == ["procedure_mismatch"] and loop.anomalies[0].travels_with_result


def test_fewer_archived_images_than_performed_escalates():
    order, booking, arrival, start, done, archived = happy_path(RID)[:6]
    loop, effects = run([order, booking, arrival, start, done, archived.model_copy(update={"instance_count": 100})])
    assert any(isinstance(e, m.Escalate) and "100 of 120" in e.reason for e in effects)
    loop, _ = run([archived.model_copy(update={"instance_count": 120, "event_id": "again"})], loop)
    assert not loop.open_anomalies


def test_two_mpps_for_one_study_acquired_when_both_done():
    order, booking, arrival, start, done = happy_path(RID)[:5]
    start2 = start.model_copy(update={"mpps_uid": "9.2", "event_id": "s2"})
    done2 = done.model_copy(update={"mpps_uid": "9.2", "event_id": "d2", "instance_count": 30})
    loop, _ = run([order, booking, arrival, start, start2, done])
    assert loop.stage == Stage.IN_PROGRESS
    loop, _ = run([done2], loop)
    assert loop.stage == Stage.ACQUIRED and loop.performed_instances == 150


def test_ack_before_any_final_is_an_anomaly():
    loop, _ = run([happy_path(RID)[0], acknowledged(RID, at(1))])
    assert loop.stage == Stage.ORDERED and loop.anomalies[-1].code == "ack_without_result"


def test_order_after_final_triggers_the_missed_delivery():
    order, *_, final = happy_path(RID)
    loop, effects = run([final])
    assert loop.stage == Stage.REPORTED_FINAL and loop.pending_delivery == "result"
    loop, effects = run([order], loop)
    assert m.Deliver(what="result", version=1) in effects


# --- deadlines ----------------------------------------------------------------------------


def test_no_show_after_appointment_plus_grace():
    order, booking = happy_path(RID)[:2]
    loop, _ = run([order, booking])
    d = m.next_deadline(loop, P)
    assert d and d.action == "no_show" and d.at == booking.appointment.start + P.arrival_grace
    assert m.tick(loop, d.at - timedelta(seconds=1), P).effects == []
    step = m.tick(loop, d.at, P)
    assert step.loop.stage == Stage.DID_NOT_ATTEND and step.loop.no_show_inferred


def test_no_show_reason_names_the_grace_in_its_unit():
    order, booking = happy_path(RID)[:2]
    for grace, text in ((timedelta(minutes=30), "+ 30m grace"), (timedelta(seconds=15), "+ 15s grace"), (timedelta(minutes=90), "+ 1h30m grace")):
        policy = P.model_copy(update={"arrival_grace": grace})
        loop, _ = run([order, booking])
        loop = m.tick(loop, booking.appointment.start + grace, policy).loop
        assert text in loop.outcome_reason, loop.outcome_reason


def test_arrival_after_inferred_no_show_reopens():
    order, booking, arrival = happy_path(RID)[:3]
    loop, _ = run([order, booking])
    loop = m.tick(loop, at(5), P).loop
    loop, _ = run([arrival.model_copy(update={"event_id": "late-arrival"})], loop)
    assert loop.stage == Stage.ARRIVED and loop.outcome is None
    assert any(a.code == "no_show_reversed" for a in loop.anomalies)


@pytest.mark.parametrize(
    ("n_events", "priority", "target"),
    [
        (3, "stat", timedelta(minutes=30)),  # arrived: waiting for MPPS start
        (3, "routine", timedelta(hours=2)),
        (4, "routine", timedelta(hours=4)),  # in progress: waiting for MPPS end
        (5, "routine", timedelta(hours=1)),  # acquired: waiting for archive
        (6, "stat", timedelta(hours=1)),  # archived: waiting for final report
        (6, "urgent", timedelta(hours=4)),
        (6, "routine", timedelta(hours=48)),
        (8, "routine", timedelta(minutes=15)),  # final: waiting for delivery
    ],
)
def test_stage_deadlines_follow_priority(n_events, priority, target):
    events = happy_path(RID, priority=priority)[:n_events]
    loop, _ = run(events)
    d = m.next_deadline(loop, P)
    assert d and d.action == "escalate" and d.level == 1
    assert d.at == events[-1].occurred_at + target


def test_escalation_is_graded_and_never_closes():
    loop, _ = run(happy_path(RID)[:3])
    levels = []
    for _ in range(5):
        d = m.next_deadline(loop, P)
        if d is None:
            break
        step = m.tick(loop, d.at, P)
        loop = step.loop
        levels += [e.level_name for e in step.effects if isinstance(e, m.Escalate)]
    assert levels == ["remind", "escalate", "incident"]
    assert loop.stage == Stage.ARRIVED and loop.escalation_level == 3
    assert m.next_deadline(loop, P) is None


def test_critical_result_tightens_acknowledgment_deadline():
    events = happy_path(RID)
    events[-1] = events[-1].model_copy(update={"critical": True})
    loop, _ = run(events + [delivered(RID, at(5.1))])
    d = m.next_deadline(loop, P)
    assert d and d.at == at(5.1) + P.critical_acknowledgment


def test_closed_loop_completes_after_amendment_window():
    loop, _ = run(happy_path(RID) + [delivered(RID, at(5.1)), acknowledged(RID, at(6))])
    d = m.next_deadline(loop, P)
    assert d and d.action == "complete" and d.at == at(6) + P.amendment_window
    assert m.tick(loop, d.at, P).effects == [m.Complete()]


# --- operator commands ---------------------------------------------------------------------


def test_operator_commands_are_validated():
    loop, _ = run(happy_path(RID)[:2])
    assert "not on hold" in (m.validate_command(loop, ev.ResolveIdentityHold(decision="accept")) or "")
    assert "open" in (m.validate_command(loop, ev.ReopenLoop(reason="x")) or "")
    assert m.validate_command(loop, ev.Redeliver(reason="x"))
    closed = m.command(loop, ev.CloseLoop(reason="patient moved away", operator="op1"), at(1), P).loop
    assert closed.stage == Stage.CANCELLED and closed.outcome == Outcome.CLOSED_BY_OPERATOR
    reopened = m.command(closed, ev.ReopenLoop(reason="mistake"), at(2), P).loop
    assert reopened.stage == Stage.SCHEDULED and reopened.outcome is None
    with pytest.raises(ValueError):
        m.command(reopened, ev.ReopenLoop(reason="again"), at(3), P)


def test_rescheduling_moves_the_no_show_deadline():
    order, booking = happy_path(RID)[:2]
    later = booking.appointment.start + timedelta(days=2)
    loop, _ = run([order, booking, ev.Rescheduled(event_id="s13", occurred_at=at(1), appointment=Appointment(start=later))])
    assert m.next_deadline(loop, P).at == later + P.arrival_grace


def test_ack_of_a_withdrawn_report_cannot_close_the_loop():
    loop, _ = run(happy_path(RID) + [delivered(RID, at(5.1))])
    loop, _ = run([ev.ReportWithdrawn(event_id="w", occurred_at=at(6), reason="cancelled")], loop)
    loop, _ = run([acknowledged(RID, at(6.5), version=1)], loop)
    assert loop.stage == Stage.ARCHIVED and loop.outcome is None
    loop, effects = run([ev.ReportIssued(event_id="f2", occurred_at=at(8), status="final")], loop)
    assert loop.report.version == 2 and m.Deliver(what="result", version=2) in effects
