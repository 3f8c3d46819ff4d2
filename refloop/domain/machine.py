"""The loop's rules as pure functions.

    apply(loop, event, now, policy)   -> Step(loop, effects)   an event from the world
    tick(loop, now, policy)           -> Step(loop, effects)   the loop's deadline passed
    command(loop, cmd, now, policy)   -> Step(loop, effects)   an operator's decision
    next_deadline(loop, policy)       -> Deadline | None       what the one timer waits for

Nothing here raises on odd input: duplicates are no-ops, early events move the loop to the
latest truthful state, impossible ones become anomalies that flag an operator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel

from refloop.domain import codes
from refloop.domain import events as ev
from refloop.domain.loop import (
    EXCEPTION_STAGES,
    HAPPY_PATH,
    RANK,
    Anomaly,
    Escalation,
    Hold,
    Loop,
    Outcome,
    ProcedureStep,
    Stage,
    TimelineEntry,
)
from refloop.domain.policy import ESCALATION_LEVELS, Policy
from refloop.domain.referral import Appointment, Patient, PatientId, Referral

# --- effects: plain data the workflow carries out as activities ----------------------------


class Deliver(BaseModel):
    what: Literal["result", "exception", "retraction"]
    version: int


class Escalate(BaseModel):
    seq: int  # index in loop.escalations
    level: int
    level_name: str
    stage: str
    reason: str


class NotifyRequester(BaseModel):
    """A milestone the requester is told about along the way (FHIR Task / ORC SC)."""

    milestone: str  # accepted, booked, arrived, performed, report_available, delayed, cancelled, did_not_attend, not_performed, reopened
    detail: str = ""
    # Where the loop stood once the input that caused it was applied; the workflow stamps it.
    stage: str = ""


class Complete(BaseModel):
    """The amendment window after closure is over: the workflow may end."""


Effect = Deliver | Escalate | NotifyRequester | Complete


@dataclass
class Step:
    loop: Loop
    effects: list[Effect] = field(default_factory=list)


@dataclass(frozen=True)
class Deadline:
    at: datetime
    action: Literal["escalate", "no_show", "complete"]
    stage: Stage
    level: int = 0  # the escalation level that fires at `at`


# Stages a loop may legitimately pass by (not every report has a preliminary).
_OPTIONAL_STAGES = frozenset({Stage.REPORTED_PRELIMINARY})


def new_loop(referral_id: str) -> Loop:
    return Loop(referral=Referral(referral_id=referral_id))


def _rank(loop: Loop) -> int:
    """Happy-path rank of where the loop is, seeing through an identity hold."""
    stage = loop.hold.resume_stage if loop.stage == Stage.ON_HOLD and loop.hold else loop.stage
    return RANK.get(stage, len(HAPPY_PATH))


# --- events --------------------------------------------------------------------------------


class _Ctx:
    """One application of one input: collects effects and the timeline note."""

    def __init__(self, loop: Loop, now: datetime, policy: Policy):
        self.loop = loop
        self.now = now
        self.policy = policy
        self.effects: list[Effect] = []
        self.notes: list[str] = []
        self.applied = True

    def note(self, text: str) -> None:
        self.notes.append(text)

    def ignore(self, text: str) -> None:
        self.applied = False
        self.notes.append(text)

    def anomaly(self, code: str, detail: str, travels: bool = False) -> None:
        self.loop.anomalies.append(
            Anomaly(at=self.now, code=code, detail=detail, travels_with_result=travels)
        )
        self.notes.append(f"anomaly {code}: {detail}")

    def escalate(self, level: int, reason: str) -> None:
        loop = self.loop
        loop.escalations.append(Escalation(at=self.now, stage=loop.stage.value, level=level, reason=reason))
        self.effects.append(
            Escalate(
                seq=len(loop.escalations) - 1,
                level=level,
                level_name=ESCALATION_LEVELS[level - 1],
                stage=loop.stage.value,
                reason=reason,
            )
        )

    def enter(self, stage: Stage, at: datetime) -> None:
        loop = self.loop
        if loop.stage != stage:
            loop.escalation_level = 0
        loop.stage = stage
        loop.stage_since = at
        loop.milestones.setdefault(stage.value, at)

    def advance(self, target: Stage, at: datetime) -> bool:
        """Move forward along the happy path; never backwards. Returns whether the stage moved."""
        loop = self.loop
        loop.milestones.setdefault(target.value, at)
        if loop.stage == Stage.ON_HOLD and loop.hold:
            if RANK[target] > RANK[loop.hold.resume_stage]:
                loop.hold.resume_stage = target
                self.note(f"on hold; would be {target.value}")
            return False
        current = RANK.get(loop.stage, -1)
        if RANK[target] <= current:
            self.note(f"recorded; loop already at {loop.stage.value}")
            return False
        skipped = [
            s.value
            for s in HAPPY_PATH[current + 1 : RANK[target]]
            if s.value not in loop.milestones and s not in _OPTIONAL_STAGES
        ]
        if skipped and loop.stage != Stage.NEW:
            self.note(f"early: arrived before {', '.join(skipped)}")
        self.enter(target, at)
        return True

    def finish_with_exception(self, stage: Stage, outcome: Outcome, reason: str, at: datetime) -> None:
        loop = self.loop
        loop.hold = None
        loop.outcome = outcome
        loop.outcome_reason = reason
        self.enter(stage, at)
        loop.pending_delivery = "exception"
        self.effects.append(Deliver(what="exception", version=loop.report.version))
        self.effects.append(NotifyRequester(milestone=_MILESTONE_FOR_OUTCOME[outcome], detail=reason))
        self.note(f"{outcome.value}: {reason}")


_MILESTONE_FOR_OUTCOME = {
    Outcome.DID_NOT_ATTEND: "did_not_attend",
    Outcome.NOT_PERFORMED: "not_performed",
    Outcome.CANCELLED: "cancelled",
    Outcome.DUPLICATE: "cancelled",
    Outcome.ENTERED_IN_ERROR: "cancelled",
    Outcome.CLOSED_BY_OPERATOR: "cancelled",
}

# Events that may still change a loop after it closed or recorded an exception.
_AFTER_CLOSURE = {"report_revised", "report_withdrawn", "result_delivered", "result_acknowledged", "patient_merged", "order_changed"}


_EVIDENCE_OF_ARRIVAL = {"arrived", "procedure_started", "procedure_completed", "study_archived"}


def _reverse_inferred_no_show(ctx: _Ctx, kind: str) -> None:
    """Our timer guessed a no-show; the world now says the patient came. Believe the world."""
    loop = ctx.loop
    loop.no_show_inferred = False
    loop.outcome, loop.outcome_reason, loop.closed_at = None, "", None
    loop.pending_delivery = ""
    loop.milestones.pop(Stage.DID_NOT_ATTEND.value, None)
    ctx.enter(Stage.SCHEDULED, ctx.now)
    ctx.anomaly("no_show_reversed", f"{kind} arrived after the no-show timer closed the loop; loop reopened")


def apply(loop: Loop, event: ev.EventBase, now: datetime, policy: Policy) -> Step:
    ctx = _Ctx(loop.model_copy(deep=True), now, policy)
    loop = ctx.loop
    kind = event.kind  # type: ignore[attr-defined]
    if event.event_id in loop.seen_event_ids:
        ctx.ignore("duplicate event_id; already applied")
    elif loop.stage == Stage.DID_NOT_ATTEND and loop.no_show_inferred and kind in _EVIDENCE_OF_ARRIVAL:
        _reverse_inferred_no_show(ctx, kind)
        loop.seen_event_ids.append(event.event_id)
        _HANDLERS[kind](ctx, event)
    elif loop.is_finished and kind not in _AFTER_CLOSURE:
        ctx.ignore(f"loop is {loop.stage.value}")
        ctx.anomaly("event_after_closure", f"{kind} arrived after the loop was {loop.stage.value}")
        loop.seen_event_ids.append(event.event_id)
    else:
        loop.seen_event_ids.append(event.event_id)
        _HANDLERS[kind](ctx, event)
    loop.timeline.append(
        TimelineEntry(
            received_at=now,
            occurred_at=event.occurred_at,
            kind=kind,
            event_id=event.event_id,
            source=event.source,
            applied=ctx.applied,
            note="; ".join(ctx.notes),
        )
    )
    return Step(loop, ctx.effects)


def _order_placed(ctx: _Ctx, e: ev.OrderPlaced) -> None:
    loop = ctx.loop
    ref = loop.referral
    first = not loop.ordered
    loop.ordered = True
    if e.placer_order_number:
        ref.placer_order_number = e.placer_order_number
    if e.patient:
        ref.patient = e.patient
    ref.requester = e.requester
    ref.service = e.service
    ref.identifiers = ref.identifiers.merged(e.identifiers)
    if e.appointment:
        ref.appointment = e.appointment  # station AETs may come with the order, the time later
    if not first:
        ctx.note("order repeated; details refreshed")
        return
    if loop.pending_delivery:
        # Something was due to the requester before we knew who the requester was.
        ctx.effects.append(Deliver(what=loop.pending_delivery, version=loop.report.version))
    if ctx.advance(Stage.ORDERED, e.occurred_at):
        ctx.effects.append(NotifyRequester(milestone="accepted"))
    elif loop.stage not in (Stage.NEW, Stage.ORDERED):
        ctx.note(f"order arrived after {loop.stage.value}")
    _close_awaiting_order(ctx)


def _close_awaiting_order(ctx: _Ctx) -> None:
    """Anomalies about a missing order resolve once it arrives."""
    for a in ctx.loop.anomalies:
        if a.code == "no_order" and not a.resolved:
            a.resolved = True


def _order_changed(ctx: _Ctx, e: ev.OrderChanged) -> None:
    ref = ctx.loop.referral
    if e.service:
        ref.service = e.service
    if e.requester:
        ref.requester = e.requester
    ctx.note("order details changed")


def _booked_where(known: Appointment, booking: Appointment) -> Appointment:
    """A booking that names no station keeps the stations the order already named (an OMI's
    IPC station AE titles, say): the modality worklist is queried by them."""
    keep = {k: getattr(known, k) for k in ("station_aet", "station_name", "location") if not getattr(booking, k)}
    return booking.model_copy(update=keep)


def _scheduled(ctx: _Ctx, e: ev.Scheduled) -> None:
    loop = ctx.loop
    ref = loop.referral
    ref.appointment = _booked_where(ref.appointment, e.appointment)
    ref.identifiers = ref.identifiers.merged(e.identifiers)
    if e.patient and ref.patient and e.patient != ref.patient.id:
        ctx.anomaly("patient_mismatch", f"booking names patient {e.patient}, order names {ref.patient.id}")
    elif e.patient and not ref.patient:
        ref.patient = Patient(id=e.patient)
    if ctx.advance(Stage.SCHEDULED, e.occurred_at):
        start = e.appointment.start.isoformat() if e.appointment.start else "unknown time"
        ctx.effects.append(NotifyRequester(milestone="booked", detail=start))


def _rescheduled(ctx: _Ctx, e: ev.Rescheduled) -> None:
    loop = ctx.loop
    loop.referral.appointment = _booked_where(loop.referral.appointment, e.appointment)
    if _rank(loop) > RANK[Stage.SCHEDULED]:
        ctx.note(f"rescheduled while {loop.stage.value}; appointment updated only")
        return
    if loop.stage == Stage.SCHEDULED:
        loop.stage_since = e.occurred_at
        loop.escalation_level = 0
    else:
        ctx.advance(Stage.SCHEDULED, e.occurred_at)
    start = e.appointment.start.isoformat() if e.appointment.start else "unknown time"
    ctx.effects.append(NotifyRequester(milestone="booked", detail=start))
    ctx.note(f"new appointment {start}")


def _appointment_cancelled(ctx: _Ctx, e: ev.AppointmentCancelled) -> None:
    if _rank(ctx.loop) >= RANK[Stage.IN_PROGRESS]:
        ctx.ignore("appointment cancelled after acquisition started")
        ctx.anomaly("late_cancellation", "appointment cancelled after the procedure started")
        return
    ctx.finish_with_exception(Stage.CANCELLED, Outcome.CANCELLED, e.reason or "appointment cancelled", e.occurred_at)


def _arrived(ctx: _Ctx, e: ev.Arrived) -> None:
    loop = ctx.loop
    booked = loop.referral.patient.id if loop.referral.patient else None
    if booked and e.patient != booked:
        loop.milestones.setdefault(Stage.ARRIVED.value, e.occurred_at)
        resume = max(loop.stage, Stage.ARRIVED, key=lambda s: RANK.get(s, 0))
        loop.hold = Hold(
            reason=f"arrival identity {e.patient} differs from booking {booked}",
            seen=e.patient,
            resume_stage=resume,
        )
        ctx.enter(Stage.ON_HOLD, e.occurred_at)
        ctx.note(f"identity mismatch: desk saw {e.patient}, booking has {booked}; on hold for an operator")
        return
    if ctx.advance(Stage.ARRIVED, e.occurred_at):
        ctx.effects.append(NotifyRequester(milestone="arrived"))


def _step(loop: Loop, mpps_uid: str) -> ProcedureStep:
    for s in loop.procedure_steps:
        if s.mpps_uid == mpps_uid:
            return s
    s = ProcedureStep(mpps_uid=mpps_uid)
    loop.procedure_steps.append(s)
    return s


def _same_patient_at_modality(seen: PatientId, booked: PatientId) -> bool:
    """Modalities often send no Issuer of Patient ID: an unknown issuer is not another issuer."""
    return seen.value == booked.value and (not seen.issuer or not booked.issuer or seen.issuer == booked.issuer)


def _procedure_started(ctx: _Ctx, e: ev.ProcedureStarted) -> None:
    loop = ctx.loop
    ref = loop.referral
    step = _step(loop, e.mpps_uid or e.event_id)
    step.procedure_code = e.procedure_code
    ref.identifiers = ref.identifiers.merged(e.identifiers)
    booked = ref.service.procedure_code
    if e.procedure_code and booked and e.procedure_code != booked:
        ctx.anomaly(
            "procedure_mismatch",
            f"modality performed {e.procedure_code} {e.procedure_display}".strip() + f", booked {booked}",
            travels=True,
        )
    if e.patient and ref.patient and not _same_patient_at_modality(e.patient, ref.patient.id):
        ctx.anomaly("patient_mismatch", f"modality reported patient {e.patient}, loop has {ref.patient.id}", travels=True)
    ctx.advance(Stage.IN_PROGRESS, e.occurred_at)


def _procedure_completed(ctx: _Ctx, e: ev.ProcedureCompleted) -> None:
    loop = ctx.loop
    step = _step(loop, e.mpps_uid or e.event_id)
    if step.status == "discontinued":
        ctx.ignore("procedure step already discontinued")
        ctx.anomaly("mpps_after_final", f"COMPLETED after DISCONTINUED for {step.mpps_uid}")
        return
    step.status = "completed"
    step.series_count, step.instance_count = e.series_count, e.instance_count
    loop.milestones.setdefault(Stage.IN_PROGRESS.value, e.occurred_at)
    if any(s.status == "in_progress" for s in loop.procedure_steps):
        ctx.note("other procedure steps still in progress")
        return
    if ctx.advance(Stage.ACQUIRED, e.occurred_at):
        ctx.effects.append(NotifyRequester(milestone="performed", detail=f"{loop.performed_instances} instances"))
    _check_images(ctx)


def _procedure_discontinued(ctx: _Ctx, e: ev.ProcedureDiscontinued) -> None:
    loop = ctx.loop
    step = _step(loop, e.mpps_uid or e.event_id)
    step.status = "discontinued"
    step.reason_code = e.reason_code
    step.series_count, step.instance_count = e.series_count, e.instance_count
    reason = e.reason or codes.discontinuation_reason(e.reason_code)
    if any(s.status == "completed" for s in loop.procedure_steps):
        ctx.note(f"one procedure step discontinued ({reason}); another completed")
        return
    if any(s.status == "in_progress" for s in loop.procedure_steps):
        ctx.note(f"procedure step discontinued ({reason}); others still in progress")
        return
    if _rank(loop) >= RANK[Stage.ARCHIVED]:
        ctx.anomaly("late_discontinuation", f"MPPS discontinued ({reason}) after images were archived")
        return
    if e.reason_code == codes.WRONG_WORKLIST_ENTRY:
        back = Stage.ARRIVED if Stage.ARRIVED.value in loop.milestones else Stage.SCHEDULED
        loop.procedure_steps = []
        loop.milestones.pop(Stage.IN_PROGRESS.value, None)
        ctx.enter(back, e.occurred_at)
        ctx.anomaly("wrong_worklist_entry", f"modality picked the wrong worklist entry; back to {back.value}")
    elif e.reason_code == codes.DID_NOT_ARRIVE:
        ctx.finish_with_exception(Stage.DID_NOT_ATTEND, Outcome.DID_NOT_ATTEND, reason, e.occurred_at)
    elif e.reason_code == codes.DUPLICATE_ORDER:
        ctx.finish_with_exception(Stage.CANCELLED, Outcome.DUPLICATE, reason, e.occurred_at)
        ctx.anomaly("duplicate_unresolved", "modality says duplicate order; surviving referral not named")
    else:
        partial = " (partially performed)" if e.instance_count else ""
        ctx.finish_with_exception(Stage.NOT_PERFORMED, Outcome.NOT_PERFORMED, reason + partial, e.occurred_at)


def _study_archived(ctx: _Ctx, e: ev.StudyArchived) -> None:
    loop = ctx.loop
    ref = loop.referral
    ref.identifiers = ref.identifiers.merged(
        ev.Identifiers(study_instance_uid=e.study_instance_uid, accession_number=e.accession_number)
    )
    loop.archived_instances = max(loop.archived_instances, e.instance_count)
    ctx.advance(Stage.ARCHIVED, e.occurred_at)
    _check_images(ctx)


def _check_images(ctx: _Ctx) -> None:
    """Reconcile what the modality says it made with what the archive holds."""
    loop = ctx.loop
    if Stage.ARCHIVED.value not in loop.milestones:
        return
    performed, archived = loop.performed_instances, loop.archived_instances
    missing = [a for a in loop.anomalies if a.code == "images_missing" and not a.resolved]
    if performed and archived < performed:
        if not missing:
            detail = f"archive holds {archived} of {performed} instances the modality reported"
            ctx.anomaly("images_missing", detail)
            ctx.escalate(2, detail)
    else:
        for a in missing:
            a.resolved = True
            ctx.note("all images archived")


def _report_issued(ctx: _Ctx, e: ev.ReportIssued) -> None:
    loop = ctx.loop
    report = loop.report
    if e.status == "preliminary":
        if _has_final(loop):
            ctx.ignore("preliminary after final; final kept")
            return
        report.report_id, report.status, report.conclusion = e.report_id, "preliminary", e.conclusion
        report.critical, report.issued_at = e.critical, e.occurred_at
        if ctx.advance(Stage.REPORTED_PRELIMINARY, e.occurred_at):
            ctx.effects.append(NotifyRequester(milestone="report_available", detail="preliminary"))
        return
    if _has_final(loop):
        ctx.ignore("final already issued; use an amendment to change it")
        return
    _issue_final(ctx, e.report_id, "final", e.conclusion, e.critical, e.occurred_at)


def _has_final(loop: Loop) -> bool:
    return loop.report.version > 0 and loop.report.status != "withdrawn"


def _issue_final(ctx: _Ctx, report_id: str, status: str, conclusion: str, critical: bool, at: datetime) -> None:
    loop = ctx.loop
    report = loop.report
    report.version += 1
    report.report_id = report_id or report.report_id
    report.status, report.conclusion, report.critical, report.issued_at = status, conclusion, critical, at
    loop.pending_delivery = "result"
    if report.version == 1 or loop.stage in (Stage.ARCHIVED, Stage.REPORTED_PRELIMINARY):
        ctx.advance(Stage.REPORTED_FINAL, at)
    else:
        _reopen_for_delivery(ctx, at)
    ctx.effects.append(NotifyRequester(milestone="report_available", detail=status))
    ctx.effects.append(Deliver(what="result", version=report.version))


def _reopen_for_delivery(ctx: _Ctx, at: datetime) -> None:
    loop = ctx.loop
    if loop.stage == Stage.ON_HOLD and loop.hold:
        loop.hold.resume_stage = Stage.REPORTED_FINAL
        return
    loop.outcome, loop.outcome_reason, loop.closed_at = None, "", None
    ctx.enter(Stage.REPORTED_FINAL, at)
    loop.stage_since = at


def _report_revised(ctx: _Ctx, e: ev.ReportRevised) -> None:
    loop = ctx.loop
    if loop.stage in EXCEPTION_STAGES:
        ctx.ignore(f"report revised but loop is {loop.stage.value}")
        ctx.anomaly("event_after_closure", f"report {e.revision} for a loop that is {loop.stage.value}")
        return
    if loop.stage == Stage.CLOSED and loop.outcome != Outcome.COMPLETED:
        ctx.ignore(f"report revised but loop closed as {loop.outcome}")
        ctx.anomaly("event_after_closure", f"report {e.revision} after closure as {loop.outcome}")
        return
    if not _has_final(loop):
        ctx.note(f"{e.revision} report before any final; taken as the final")
    else:
        ctx.note(f"report {e.revision}; redelivery needs a new acknowledgment")
    _issue_final(ctx, e.report_id, e.revision, e.conclusion, e.critical, e.occurred_at)


def _report_withdrawn(ctx: _Ctx, e: ev.ReportWithdrawn) -> None:
    loop = ctx.loop
    report = loop.report
    if not report.status:
        ctx.ignore("no report to withdraw")
        ctx.anomaly("withdrawn_unknown_report", f"report withdrawn ({e.reason}) but none was issued")
        return
    had_delivery = loop.delivered_version > 0
    report.status = "withdrawn"
    if e.reason == "entered_in_error":
        # Wrong patient or never valid: the loop closes in error once the retraction is out.
        loop.outcome, loop.outcome_reason = Outcome.ENTERED_IN_ERROR, e.note or "report entered in error"
        ctx.enter(Stage.ENTERED_IN_ERROR, e.occurred_at)
        loop.closed_at = None
    else:
        # Cancelled report: the study still needs reading; back to waiting for a new report.
        # Versions stay monotonic so a late ack of the withdrawn one can never close the loop.
        report.conclusion = ""
        loop.outcome, loop.closed_at = None, None
        ctx.enter(Stage.ARCHIVED, e.occurred_at)
        ctx.note("report cancelled; waiting for a new report")
    if had_delivery:
        loop.pending_delivery = "retraction"
        ctx.effects.append(Deliver(what="retraction", version=loop.delivered_version))
    elif e.reason == "entered_in_error":
        loop.pending_delivery = "exception"
        ctx.effects.append(Deliver(what="exception", version=0))


def _result_delivered(ctx: _Ctx, e: ev.ResultDelivered) -> None:
    loop = ctx.loop
    loop.milestones.setdefault(f"delivered_{e.what}", e.occurred_at)
    if e.what == "result":
        if not _has_final(loop):
            ctx.ignore("delivery reported but there is no final report")
            ctx.anomaly("delivery_without_report", "a result delivery was reported before any final report")
            return
        version = e.report_version or loop.report.version
        loop.delivered_version = max(loop.delivered_version, version)
        if version < loop.report.version:
            ctx.note(f"version {version} delivered; version {loop.report.version} still pending")
            return
        loop.pending_delivery = ""
        if loop.acknowledged_version >= loop.report.version:
            _close(ctx, Outcome.COMPLETED, "result delivered and acknowledged", e.occurred_at)
        else:
            ctx.advance(Stage.DELIVERED, e.occurred_at)
        return
    if e.what == "retraction":
        loop.pending_delivery = "exception" if loop.stage == Stage.ENTERED_IN_ERROR else ""
        if loop.stage == Stage.ENTERED_IN_ERROR:
            _close(ctx, Outcome.ENTERED_IN_ERROR, loop.outcome_reason, e.occurred_at)
        else:
            ctx.note("retraction delivered")
        return
    # exception notice
    if loop.stage not in EXCEPTION_STAGES:
        ctx.ignore(f"exception notice delivered but loop is {loop.stage.value}")
        return
    loop.pending_delivery = ""
    _close(ctx, loop.outcome or Outcome.CLOSED_BY_OPERATOR, loop.outcome_reason, e.occurred_at)


def _result_acknowledged(ctx: _Ctx, e: ev.ResultAcknowledged) -> None:
    loop = ctx.loop
    if not _has_final(loop):
        ctx.ignore("acknowledgment but no final result exists")
        ctx.anomaly("ack_without_result", "requester acknowledged before any final report")
        return
    version = e.report_version or loop.delivered_version or loop.report.version
    if version < loop.report.version:
        loop.acknowledged_version = max(loop.acknowledged_version, version)
        ctx.ignore(f"acknowledges version {version}; version {loop.report.version} awaits acknowledgment")
        return
    loop.acknowledged_version = loop.report.version
    if loop.delivered_version < loop.report.version:
        ctx.note("early: acknowledged before the delivery was recorded")
        loop.delivered_version = loop.report.version
        loop.pending_delivery = ""
    _close(ctx, Outcome.COMPLETED, "result delivered and acknowledged", e.occurred_at)


def _close(ctx: _Ctx, outcome: Outcome, reason: str, at: datetime) -> None:
    loop = ctx.loop
    loop.hold = None
    loop.outcome, loop.outcome_reason = outcome, reason
    loop.closed_at = ctx.now
    ctx.enter(Stage.CLOSED, at)
    ctx.note(f"closed: {outcome.value}")


def _referral_cancelled(ctx: _Ctx, e: ev.ReferralCancelled) -> None:
    loop = ctx.loop
    if _has_final(loop):
        ctx.ignore("cancellation after a final report")
        ctx.anomaly("late_cancellation", f"order cancelled ({e.reason}) after a final report was issued")
        return
    reason = e.note or f"cancelled: {e.reason}"
    if e.reason == "duplicate":
        loop.surviving_referral = e.surviving_referral
        reason = e.note or (f"duplicate of {e.surviving_referral}" if e.surviving_referral else "duplicate order")
        outcome = Outcome.DUPLICATE
    else:
        outcome = Outcome.CANCELLED
    if _rank(loop) >= RANK[Stage.IN_PROGRESS]:
        reason += " (after acquisition started; partially performed)"
    ctx.finish_with_exception(Stage.CANCELLED, outcome, reason, e.occurred_at)


def _did_not_attend(ctx: _Ctx, e: ev.DidNotAttend) -> None:
    loop = ctx.loop
    if Stage.ARRIVED.value in loop.milestones or _rank(loop) >= RANK[Stage.ARRIVED]:
        ctx.ignore("no-show reported but the patient arrived")
        ctx.anomaly("no_show_after_arrival", "a no-show was reported for a patient who arrived")
        return
    ctx.finish_with_exception(Stage.DID_NOT_ATTEND, Outcome.DID_NOT_ATTEND, e.note or "patient did not attend", e.occurred_at)


def _unable_to_perform(ctx: _Ctx, e: ev.UnableToPerform) -> None:
    loop = ctx.loop
    if _has_final(loop) or _rank(loop) >= RANK[Stage.ARCHIVED]:
        ctx.ignore("unable to perform after images were archived")
        ctx.anomaly("late_discontinuation", "unable to perform reported after the study was archived")
        return
    reason = e.reason or codes.discontinuation_reason(e.reason_code)
    ctx.finish_with_exception(Stage.NOT_PERFORMED, Outcome.NOT_PERFORMED, reason, e.occurred_at)


def _patient_merged(ctx: _Ctx, e: ev.PatientMerged) -> None:
    ref = ctx.loop.referral
    if ref.patient and ref.patient.id == e.old:
        ref.patient = ref.patient.model_copy(update={"id": e.new})
        ctx.note(f"patient identifier {e.old} merged into {e.new}")
    else:
        ctx.ignore("merge names another patient")


_HANDLERS = {
    "order_placed": _order_placed,
    "order_changed": _order_changed,
    "scheduled": _scheduled,
    "rescheduled": _rescheduled,
    "appointment_cancelled": _appointment_cancelled,
    "arrived": _arrived,
    "procedure_started": _procedure_started,
    "procedure_completed": _procedure_completed,
    "procedure_discontinued": _procedure_discontinued,
    "study_archived": _study_archived,
    "report_issued": _report_issued,
    "report_revised": _report_revised,
    "report_withdrawn": _report_withdrawn,
    "result_delivered": _result_delivered,
    "result_acknowledged": _result_acknowledged,
    "referral_cancelled": _referral_cancelled,
    "did_not_attend": _did_not_attend,
    "unable_to_perform": _unable_to_perform,
    "patient_merged": _patient_merged,
}
assert set(_HANDLERS) == set(ev.EVENT_KINDS), "every event kind needs a rule"


# --- deadlines -----------------------------------------------------------------------------


def _stage_target(loop: Loop, policy: Policy) -> tuple[str, timedelta] | None:
    prio = loop.referral.service.priority.value
    t = policy.stages
    match loop.stage:
        case Stage.NEW:
            return "awaiting_order", t.awaiting_order.for_priority(prio)
        case Stage.ORDERED:
            return "booking", t.booking.for_priority(prio)
        case Stage.ARRIVED:
            return "procedure_start", t.procedure_start.for_priority(prio)
        case Stage.IN_PROGRESS:
            return "procedure_end", t.procedure_end.for_priority(prio)
        case Stage.ACQUIRED:
            return "archive", t.archive.for_priority(prio)
        case Stage.ARCHIVED | Stage.REPORTED_PRELIMINARY:
            return "final_report", t.final_report.for_priority(prio)
        case Stage.REPORTED_FINAL:
            return "delivery", t.delivery.for_priority(prio)
        case Stage.DELIVERED:
            if loop.report.critical:
                return "acknowledgment", policy.critical_acknowledgment
            return "acknowledgment", t.acknowledgment.for_priority(prio)
        case Stage.ON_HOLD:
            return "identity_hold", t.identity_hold.for_priority(prio)
        case s if s in EXCEPTION_STAGES:
            return "delivery", t.delivery.for_priority(prio)
    return None


_WAITING = {
    "awaiting_order": "the order",
    "booking": "a booking",
    "procedure_start": "the procedure to start (MPPS)",
    "procedure_end": "the procedure to end (MPPS)",
    "archive": "the images in the archive",
    "final_report": "the final report",
    "acknowledgment": "the requester's acknowledgment",
    "identity_hold": "an operator's identity decision",
}


def waiting_for(loop: Loop, policy: Policy) -> str:
    """What the loop waits for now, in words an operator reads at a glance."""
    if loop.stage == Stage.CLOSED:
        return "nothing (closed; amendments still reopen it)"
    if loop.stage == Stage.SCHEDULED:
        start = loop.referral.appointment.start
        return f"the patient's arrival (appointment {start:%Y-%m-%d %H:%M} UTC)" if start else "the patient's arrival"
    if loop.stage in EXCEPTION_STAGES or loop.stage == Stage.REPORTED_FINAL:
        what = loop.pending_delivery or ("result" if loop.stage == Stage.REPORTED_FINAL else "exception")
        return {"result": "delivery of the result", "exception": "delivery of the no-result notice", "retraction": "delivery of the retraction"}[what]
    target = _stage_target(loop, policy)
    if target is None:
        return "-"
    text = _WAITING.get(target[0], target[0].replace("_", " "))
    if target[0] == "acknowledgment" and loop.report.critical:
        text += " (critical result)"
    return text


def next_deadline(loop: Loop, policy: Policy) -> Deadline | None:
    """The one moment the loop's timer waits for, and what happens then."""
    if loop.stage == Stage.CLOSED:
        if loop.closed_at is None:
            return None
        return Deadline(loop.closed_at + policy.amendment_window, "complete", loop.stage)
    since = loop.stage_since
    if since is None:
        return None
    if loop.stage == Stage.SCHEDULED:
        start = loop.referral.appointment.start
        if start is None:
            return None
        if policy.no_show_closes:
            return Deadline(start + policy.arrival_grace, "no_show", loop.stage)
        base = start + policy.arrival_grace
    else:
        target = _stage_target(loop, policy)
        if target is None:
            return None
        base = since + target[1]
    level = loop.escalation_level + 1
    if level > len(ESCALATION_LEVELS):
        return None
    return Deadline(base + policy.escalation_offsets[level - 1], "escalate", loop.stage, level)


def tick(loop: Loop, now: datetime, policy: Policy) -> Step:
    """The timer fired: act if the deadline is really due (it may have moved meanwhile)."""
    deadline = next_deadline(loop, policy)
    if deadline is None or deadline.at > now:
        return Step(loop, [])
    ctx = _Ctx(loop.model_copy(deep=True), now, policy)
    loop = ctx.loop
    kind = "deadline"
    if deadline.action == "complete":
        return Step(loop, [Complete()])
    if deadline.action == "no_show":
        kind = "no_show_timer"
        loop.no_show_inferred = True
        ctx.finish_with_exception(
            Stage.DID_NOT_ATTEND,
            Outcome.DID_NOT_ATTEND,
            f"no arrival by appointment + {_fmt(policy.arrival_grace)} grace",
            now,
        )
    else:
        target = _stage_target(loop, policy)
        waiting = target[0] if target else loop.stage.value
        name = ESCALATION_LEVELS[deadline.level - 1]
        reason = f"{loop.stage.value} for too long: waiting for {waiting.replace('_', ' ')}"
        loop.escalation_level = deadline.level
        ctx.escalate(deadline.level, reason)
        if deadline.level == 1:
            ctx.effects.append(NotifyRequester(milestone="delayed", detail=reason))
        if loop.stage == Stage.NEW and not any(a.code == "no_order" for a in loop.anomalies):
            ctx.anomaly("no_order", "events arrived but no order has been received")
        ctx.note(f"{name}: {reason}")
    loop.timeline.append(TimelineEntry(received_at=now, occurred_at=deadline.at, kind=kind, source="timer", applied=True, note="; ".join(ctx.notes)))
    return Step(loop, ctx.effects)


def _fmt(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    if seconds < 60:
        return f"{seconds}s"  # a short policy (tests, the demo) still reads right
    minutes = seconds // 60
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def delivery_failed(loop: Loop, what: str, version: int, error: str, now: datetime, policy: Policy) -> Step:
    """Delivery gave up (the requester refused it, or retries ran out): flag and escalate."""
    ctx = _Ctx(loop.model_copy(deep=True), now, policy)
    ctx.anomaly("delivery_failed", f"{what} v{version} not delivered: {error}")
    ctx.escalate(2, f"delivery of {what} failed: {error}")
    ctx.loop.timeline.append(
        TimelineEntry(received_at=now, kind="delivery_failed", source="refloop", applied=True, note="; ".join(ctx.notes))
    )
    return Step(ctx.loop, ctx.effects)


# --- operator commands (validated before they are accepted) ---------------------------------


def validate_command(loop: Loop, cmd: BaseModel) -> str | None:
    """Why an operator's command cannot be applied now, or None if it can."""
    if isinstance(cmd, ev.CloseLoop):
        if loop.stage == Stage.CLOSED:
            return f"loop is already closed ({loop.outcome.value if loop.outcome else 'no outcome'})"
        return None
    if isinstance(cmd, ev.ResolveIdentityHold):
        if loop.stage != Stage.ON_HOLD:
            return f"loop is not on hold (it is {loop.stage.value})"
        return None
    if isinstance(cmd, ev.ReopenLoop):
        if not loop.is_finished:
            return f"loop is open (it is {loop.stage.value}); nothing to reopen"
        return None
    if isinstance(cmd, ev.Redeliver):
        if not loop.report.version and loop.outcome in (None, Outcome.COMPLETED):
            return "nothing to redeliver: no final report and no exception recorded"
        return None
    return f"unknown command {type(cmd).__name__}"


def command(loop: Loop, cmd: BaseModel, now: datetime, policy: Policy) -> Step:
    """Apply a validated operator command. Call validate_command first."""
    error = validate_command(loop, cmd)
    if error:
        raise ValueError(error)
    ctx = _Ctx(loop.model_copy(deep=True), now, policy)
    loop = ctx.loop
    operator = getattr(cmd, "operator", "") or "operator"
    if isinstance(cmd, ev.CloseLoop):
        ctx.finish_with_exception(Stage.CANCELLED, Outcome.CLOSED_BY_OPERATOR, f"closed by {operator}: {cmd.reason}", now)
        for a in loop.anomalies:
            a.resolved = True
        kind = "operator_close"
    elif isinstance(cmd, ev.ResolveIdentityHold):
        hold = loop.hold
        assert hold is not None
        loop.hold = None
        if cmd.decision == "accept":
            ctx.enter(hold.resume_stage, now)
            ctx.note(f"identity accepted by {operator}; resumes at {hold.resume_stage.value}")
        else:
            loop.milestones.pop(Stage.ARRIVED.value, None)
            ctx.enter(Stage.SCHEDULED, now)
            ctx.note(f"identity rejected by {operator}; back to scheduled")
        kind = "operator_resolve_hold"
    elif isinstance(cmd, ev.ReopenLoop):
        resume = _furthest_stage(loop)
        loop.outcome, loop.outcome_reason, loop.closed_at, loop.pending_delivery = None, "", None, ""
        ctx.enter(resume, now)
        for a in loop.anomalies:
            a.resolved = True
        ctx.note(f"reopened by {operator} at {resume.value}: {cmd.reason}")
        # The requester was told the loop ended; tell it the loop is open again.
        ctx.effects.append(NotifyRequester(milestone="reopened", detail=cmd.reason))
        kind = "operator_reopen"
    else:
        assert isinstance(cmd, ev.Redeliver)
        if loop.outcome not in (None, Outcome.COMPLETED):
            loop.pending_delivery = "exception"
            ctx.effects.append(Deliver(what="exception", version=loop.report.version))
        else:
            loop.pending_delivery = "result"
            ctx.effects.append(Deliver(what="result", version=loop.report.version))
        ctx.note(f"redelivery requested by {operator}: {cmd.reason}")
        kind = "operator_redeliver"
    loop.timeline.append(TimelineEntry(received_at=now, kind=kind, source=operator, applied=True, note="; ".join(ctx.notes)))
    return Step(loop, ctx.effects)


def _furthest_stage(loop: Loop) -> Stage:
    """The furthest happy-path stage the loop truly reached before it finished (not closed)."""
    reached = [s for s in HAPPY_PATH if s.value in loop.milestones and s not in (Stage.CLOSED, Stage.DELIVERED)]
    return reached[-1] if reached else Stage.ORDERED
