"""ReferralWorkflow: one long-lived workflow per referral, a thin durable shell around the
pure state machine in refloop.domain.machine.

Signals apply events to the state at once (queries see them immediately); the run loop then
carries out the effects: one local activity persists everything that changed in that
workflow task, deliveries and escalations run as activities, and one timer waits for the
loop's next deadline.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.contracts import (
        DeliveryRequest,
        DeliveryResult,
        EscalationRequest,
        PersistRequest,
        PersistResult,
    )
    from refloop import temporal as names
    from refloop.domain import events as ev
    from refloop.domain import machine
    from refloop.domain.loop import Loop, Stage
    from refloop.domain.policy import ESCALATION_LEVELS, Policy
    from workflows.contracts import Carried, LoopSummary, ReferralInput


_DELIVERABLE = frozenset({"final", "amended", "corrected", "appended"})


def delivery_retry(policy: Policy) -> RetryPolicy:
    d = policy.delivery
    return RetryPolicy(
        initial_interval=d.first_retry,
        backoff_coefficient=d.backoff,
        maximum_interval=d.max_retry_interval,
        maximum_attempts=d.max_attempts,
        non_retryable_error_types=["DeliveryRefused"],
    )


@workflow.defn(name=names.WORKFLOW_TYPE)
class ReferralWorkflow:
    @workflow.init
    def __init__(self, inp: ReferralInput) -> None:
        self._policy = inp.policy
        c = inp.carried
        self._loop: Loop = c.loop if c else machine.new_loop(inp.referral_id)
        self._timeline_persisted = c.timeline_persisted if c else 0
        self._escalations_persisted = len(self._loop.escalations) if c else 0
        self._milestone_seq = c.milestone_seq if c else 0
        self._delivery_seq = c.delivery_seq if c else 0
        self._search_attributes: dict[str, str] = dict(c.search_attributes) if c else {}
        self._effects: list[machine.Effect] = []
        self._dirty = True
        self._running = 0  # deliveries and escalations in flight
        self._timer: asyncio.Task[None] | None = None
        self._timer_at = None
        self._timer_fired = False
        self._complete = False
        # Deliveries go out one at a time, in order; a newer one of the same kind supersedes.
        self._delivery_lane = asyncio.Lock()
        self._latest_delivery: dict[str, int] = {}

    # --- the run loop ------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: ReferralInput) -> LoopSummary:
        while True:
            await workflow.wait_condition(
                lambda: self._dirty or self._timer_fired or self._complete or self._continue_as_new_suggested()
            )
            if self._timer_fired:
                self._timer_fired = False
                step = machine.tick(self._loop, workflow.now(), self._policy)
                if step.loop is not self._loop or step.effects:
                    self._feed(step)
                self._arm_timer()
            if self._dirty:
                await self._flush()
                continue
            if self._complete or self._continue_as_new_suggested():
                # Let in-flight handlers and activities finish so nothing is lost.
                await workflow.wait_condition(lambda: self._running == 0 and workflow.all_handlers_finished())
                if self._dirty:
                    continue
                if self._complete:
                    return self._summary()
                workflow.continue_as_new(
                    ReferralInput(
                        referral_id=self._loop.referral.referral_id,
                        policy=self._policy,
                        carried=Carried(
                            loop=self._loop,
                            timeline_persisted=self._timeline_persisted,
                            milestone_seq=self._milestone_seq,
                            delivery_seq=self._delivery_seq,
                            search_attributes=self._search_attributes,
                        ),
                    )
                )

    def _continue_as_new_suggested(self) -> bool:
        return workflow.info().is_continue_as_new_suggested()

    def _feed(self, step: machine.Step) -> None:
        self._loop = step.loop
        for eff in step.effects:
            if isinstance(eff, machine.NotifyRequester) and not eff.stage:
                eff.stage = step.loop.stage.value  # the requester is told where the loop really is
        self._effects.extend(step.effects)
        self._dirty = True

    def _receive(self, event: ev.EventBase) -> None:
        self._feed(machine.apply(self._loop, event, workflow.now(), self._policy))

    async def _flush(self) -> None:
        """Carry out what the machine asked for since the last flush."""
        self._dirty = False
        effects, self._effects = self._effects, []
        milestones: list[tuple[int, dict]] = []
        for eff in effects:
            if isinstance(eff, machine.NotifyRequester):
                self._milestone_seq += 1
                milestones.append((self._milestone_seq, {**eff.model_dump(), "at": workflow.now().isoformat()}))
            elif isinstance(eff, machine.Complete):
                self._complete = True
        deadline = machine.next_deadline(self._loop, self._policy)
        loop = self._loop
        result = await workflow.execute_local_activity(
            "persist_loop",
            PersistRequest(
                loop=loop,
                timeline_from=self._timeline_persisted,
                escalations_from=self._escalations_persisted,
                milestones=milestones,
                stage_deadline=deadline.at if deadline else None,
                history_length=workflow.info().get_current_history_length(),
            ),
            result_type=PersistResult,
            start_to_close_timeout=timedelta(seconds=30),
        )
        self._timeline_persisted = len(loop.timeline)
        self._escalations_persisted = len(loop.escalations)
        for eff in effects:
            if isinstance(eff, machine.Deliver):
                self._start(self._deliver(eff))
            elif isinstance(eff, machine.Escalate):
                self._start(self._escalate(eff))
        for raw in result.released:
            self._receive(ev.parse_event(raw))
        if self._loop.stage != Stage.CLOSED:
            self._complete = False  # a late amendment reopened the loop
        self._upsert_search_attributes(deadline)
        self._set_details(deadline)
        self._arm_timer()

    def _start(self, coro) -> None:
        self._running += 1

        async def run() -> None:
            try:
                await coro
            finally:
                self._running -= 1

        asyncio.create_task(run())

    async def _deliver(self, eff: machine.Deliver) -> None:
        if not self._loop.referral.requester.endpoint:
            # Nobody to send to yet: the delivery stays pending in the loop (and escalates
            # on its deadline) until the order names an endpoint or delivery is reported.
            return
        self._delivery_seq += 1
        seq = self._delivery_seq
        self._latest_delivery[eff.what] = seq
        async with self._delivery_lane:
            if self._superseded(eff, seq):
                return
            try:
                result = await workflow.execute_activity(
                    "deliver_result",
                    DeliveryRequest(loop=self._loop, what=eff.what, version=eff.version),
                    result_type=DeliveryResult,
                    start_to_close_timeout=self._policy.delivery.attempt_timeout,
                    retry_policy=delivery_retry(self._policy),
                    summary=f"deliver {eff.what} v{eff.version} to the requester"
                    + (" (CRITICAL)" if eff.what == "result" and self._loop.report.critical else ""),
                )
            except ActivityError as err:
                cause = err.cause or err
                self._feed(machine.delivery_failed(self._loop, eff.what, eff.version, str(cause), workflow.now(), self._policy))
                return
        if result.delivered:
            self._receive(
                ev.ResultDelivered(
                    event_id=f"{workflow.info().workflow_id}:delivery:{seq}",
                    occurred_at=workflow.now(),
                    source="refloop",
                    what=eff.what,  # type: ignore[arg-type]
                    report_version=eff.version,
                    channel=result.channel,
                )
            )

    def _superseded(self, eff: machine.Deliver, seq: int) -> bool:
        """Whether the loop moved on while this delivery waited its turn (the newer effect is queued)."""
        if self._latest_delivery[eff.what] != seq:
            return True
        report = self._loop.report
        # Never send a version that is no longer the current one, nor a withdrawn report.
        return eff.what == "result" and (eff.version != report.version or report.status not in _DELIVERABLE)

    async def _escalate(self, eff: machine.Escalate) -> None:
        ref = self._loop.referral
        try:
            await workflow.execute_activity(
                "notify_escalation",
                EscalationRequest(
                    referral_id=ref.referral_id,
                    seq=eff.seq,
                    level=eff.level,
                    level_name=eff.level_name,
                    stage=eff.stage,
                    reason=eff.reason,
                    priority=ref.service.priority.value,
                    modality=ref.service.modality,
                    accession_number=ref.identifiers.accession_number,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=5), maximum_attempts=20),
                summary=f"{eff.level_name}: {eff.reason}",
            )
        except ActivityError:
            # Recorded in SQL by the persist step already; the sweep still sees the loop.
            workflow.logger.warning("escalation notification failed", extra={"seq": eff.seq})

    # --- the one deadline timer --------------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = machine.next_deadline(self._loop, self._policy)
        if deadline is None or (deadline.action == "complete" and self._complete):
            return  # nothing to wait for, or completion already under way
        now = workflow.now()
        if deadline.at <= now:
            self._timer_fired = True
            return
        if self._timer is not None and not self._timer.done():
            if self._timer_at is not None and self._timer_at <= deadline.at:
                return  # fires no later than needed; tick() re-checks and re-arms
            self._timer.cancel()
        self._timer_at = deadline.at
        self._timer = asyncio.create_task(self._sleep_until(deadline))

    async def _sleep_until(self, deadline: machine.Deadline) -> None:
        what = {"escalate": f"level {deadline.level}", "no_show": "no-show", "complete": "end of amendment window"}[deadline.action]
        try:
            await workflow.sleep(deadline.at - workflow.now(), summary=f"{deadline.stage.value}: {what}")
        except asyncio.CancelledError:
            return
        self._timer_fired = True

    # --- what operators see --------------------------------------------------------------------

    def _upsert_search_attributes(self, deadline: machine.Deadline | None) -> None:
        loop = self._loop
        ref = loop.referral
        wanted: dict[str, object] = {
            names.LOOP_STATE.name: loop.stage.value,
            names.PRIORITY.name: ref.service.priority.value,
            names.MODALITY.name: ref.service.modality,
            names.ACCESSION_NUMBER.name: ref.identifiers.accession_number,
            names.OUTCOME.name: loop.outcome.value if loop.outcome else "",
            names.ESCALATION_LEVEL.name: loop.escalation_level,
            names.STAGE_DEADLINE.name: deadline.at if deadline and deadline.action != "complete" else None,
            names.NEEDS_ATTENTION.name: loop.needs_attention,
            names.REFERRAL_ID.name: ref.referral_id,
        }
        keys = {k.name: k for k in names.SEARCH_ATTRIBUTES}
        updates = []
        for name, value in wanted.items():
            marker = "" if value is None or value == "" else str(value)
            if self._search_attributes.get(name) == marker:
                continue
            self._search_attributes[name] = marker
            key = keys[name]
            updates.append(key.value_unset() if marker == "" else key.value_set(value))  # type: ignore[attr-defined]
        if updates:
            workflow.upsert_search_attributes(updates)

    def _set_details(self, deadline: machine.Deadline | None) -> None:
        """The current-details markdown the Temporal UI shows: readable at a glance."""
        loop = self._loop
        ref = loop.referral
        s = ref.service
        head = f"### {loop.stage.value.replace('_', ' ')}"
        if loop.outcome:
            head += f" — {loop.outcome.value.replace('_', ' ')}"
        lines = [head, f"{s.priority.value} · {s.modality or '-'} · {s.procedure_code or '-'} {s.procedure_display}".rstrip(), ""]
        lines.append(f"- **Waiting for:** {machine.waiting_for(loop, self._policy)}")
        if loop.stage_since:
            lines.append(f"- **Since:** {loop.stage_since:%Y-%m-%d %H:%M} UTC")
        if deadline and deadline.action != "complete":
            what = "no-show" if deadline.action == "no_show" else ESCALATION_LEVELS[deadline.level - 1]
            lines.append(f"- **Deadline:** {deadline.at:%Y-%m-%d %H:%M} UTC ({what})")
        elif deadline:
            lines.append(f"- **Amendment window ends:** {deadline.at:%Y-%m-%d %H:%M} UTC")
        if loop.outcome_reason:
            lines.append(f"- **Reason:** {loop.outcome_reason}")
        if loop.escalation_level:
            lines.append(f"- **Escalation:** level {loop.escalation_level} ({ESCALATION_LEVELS[loop.escalation_level - 1]})")
        if loop.report.version:
            critical = " **CRITICAL**" if loop.report.critical else ""
            lines.append(
                f"- **Report:** v{loop.report.version} {loop.report.status}{critical}; delivered v{loop.delivered_version}, acknowledged v{loop.acknowledged_version}"
            )
        if loop.pending_delivery:
            lines.append(f"- **Delivery pending:** {loop.pending_delivery}")
        if loop.hold:
            lines.append(f"- **On hold:** {loop.hold.reason}")
        anomalies = loop.open_anomalies
        if anomalies:
            lines += ["", f"**Open anomalies ({len(anomalies)})**"]
            lines += [f"- `{a.code}` {a.detail}" for a in anomalies[-5:]]
        lines += ["", "**Last events**"]
        lines += [
            f"- {t.received_at:%m-%d %H:%M} {t.kind}{'' if t.applied else ' *(ignored)*'}" + (f" — {t.note}" if t.note else "")
            for t in loop.timeline[-5:]
        ]
        workflow.set_current_details("\n".join(lines))

    def _summary(self) -> LoopSummary:
        loop = self._loop
        return LoopSummary(
            referral_id=loop.referral.referral_id,
            stage=loop.stage,
            outcome=loop.outcome,
            reason=loop.outcome_reason,
            events=len(loop.timeline),
            escalations=len(loop.escalations),
            needs_attention=loop.needs_attention,
        )

    @workflow.query(name="state")
    def state(self) -> Loop:
        return self._loop

    @workflow.query(name="summary")
    def summary(self) -> LoopSummary:
        return self._summary()

    # --- operator updates, validated before they are accepted -----------------------------------

    def _validate(self, cmd: BaseModel) -> None:
        error = machine.validate_command(self._loop, cmd)
        if error:
            raise ValueError(error)

    def _command(self, cmd: BaseModel) -> LoopSummary:
        self._feed(machine.command(self._loop, cmd, workflow.now(), self._policy))
        return self._summary()

    @workflow.update(name="close_loop")
    def close_loop(self, cmd: ev.CloseLoop) -> LoopSummary:
        return self._command(cmd)

    @close_loop.validator
    def _validate_close(self, cmd: ev.CloseLoop) -> None:
        self._validate(cmd)

    @workflow.update(name="resolve_identity_hold")
    def resolve_identity_hold(self, cmd: ev.ResolveIdentityHold) -> LoopSummary:
        return self._command(cmd)

    @resolve_identity_hold.validator
    def _validate_resolve(self, cmd: ev.ResolveIdentityHold) -> None:
        self._validate(cmd)

    @workflow.update(name="reopen_loop")
    def reopen_loop(self, cmd: ev.ReopenLoop) -> LoopSummary:
        return self._command(cmd)

    @reopen_loop.validator
    def _validate_reopen(self, cmd: ev.ReopenLoop) -> None:
        self._validate(cmd)

    @workflow.update(name="redeliver")
    def redeliver(self, cmd: ev.Redeliver) -> LoopSummary:
        return self._command(cmd)

    @redeliver.validator
    def _validate_redeliver(self, cmd: ev.Redeliver) -> None:
        self._validate(cmd)

    # --- one signal per event kind (readable in the UI); all go through the machine -------------

    @workflow.signal(name="order_placed")
    def order_placed(self, e: ev.OrderPlaced) -> None:
        self._receive(e)

    @workflow.signal(name="order_changed")
    def order_changed(self, e: ev.OrderChanged) -> None:
        self._receive(e)

    @workflow.signal(name="scheduled")
    def scheduled(self, e: ev.Scheduled) -> None:
        self._receive(e)

    @workflow.signal(name="rescheduled")
    def rescheduled(self, e: ev.Rescheduled) -> None:
        self._receive(e)

    @workflow.signal(name="appointment_cancelled")
    def appointment_cancelled(self, e: ev.AppointmentCancelled) -> None:
        self._receive(e)

    @workflow.signal(name="arrived")
    def arrived(self, e: ev.Arrived) -> None:
        self._receive(e)

    @workflow.signal(name="procedure_started")
    def procedure_started(self, e: ev.ProcedureStarted) -> None:
        self._receive(e)

    @workflow.signal(name="procedure_completed")
    def procedure_completed(self, e: ev.ProcedureCompleted) -> None:
        self._receive(e)

    @workflow.signal(name="procedure_discontinued")
    def procedure_discontinued(self, e: ev.ProcedureDiscontinued) -> None:
        self._receive(e)

    @workflow.signal(name="study_archived")
    def study_archived(self, e: ev.StudyArchived) -> None:
        self._receive(e)

    @workflow.signal(name="report_issued")
    def report_issued(self, e: ev.ReportIssued) -> None:
        self._receive(e)

    @workflow.signal(name="report_revised")
    def report_revised(self, e: ev.ReportRevised) -> None:
        self._receive(e)

    @workflow.signal(name="report_withdrawn")
    def report_withdrawn(self, e: ev.ReportWithdrawn) -> None:
        self._receive(e)

    @workflow.signal(name="result_delivered")
    def result_delivered(self, e: ev.ResultDelivered) -> None:
        self._receive(e)

    @workflow.signal(name="result_acknowledged")
    def result_acknowledged(self, e: ev.ResultAcknowledged) -> None:
        self._receive(e)

    @workflow.signal(name="referral_cancelled")
    def referral_cancelled(self, e: ev.ReferralCancelled) -> None:
        self._receive(e)

    @workflow.signal(name="did_not_attend")
    def did_not_attend(self, e: ev.DidNotAttend) -> None:
        self._receive(e)

    @workflow.signal(name="unable_to_perform")
    def unable_to_perform(self, e: ev.UnableToPerform) -> None:
        self._receive(e)

    @workflow.signal(name="patient_merged")
    def patient_merged(self, e: ev.PatientMerged) -> None:
        self._receive(e)
