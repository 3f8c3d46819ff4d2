"""Carries out the day's script: every step through its real protocol (HL7 v2 over MLLP, FHIR over
HTTP, DICOM worklist and MPPS), every wait on the loop as the read model shows it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from pydicom import Dataset

from refloop.config import Settings
from refloop.demo import hl7client
from refloop.demo.messages import Ids, Messages
from refloop.demo.modality import Modality, mpps_final, mpps_from_item
from refloop.demo.samples import Samples
from refloop.domain.loop import Loop, Outcome, Stage
from refloop.store.repo import Store


class StepFailed(Exception):
    """A step was refused or its effect never showed: the referral's script stops here."""

    def __init__(self, ref: Referral, why: str):
        super().__init__(why)
        self.ref = ref


@dataclass(frozen=True)
class Intended:
    """How a referral's loop should end."""

    stage: Stage
    outcome: Outcome | None = None
    escalated: bool = False  # escalations are part of the story (else there must be none)
    acknowledged_version: int = 0  # the report version the requester must have acknowledged

    def met(self, loop: Loop) -> bool:
        return (
            loop.stage == self.stage
            and loop.outcome == self.outcome
            and bool(loop.escalations) == self.escalated
            and loop.acknowledged_version >= self.acknowledged_version
        )

    def describe(self) -> str:
        if self.stage == Stage.ON_HOLD:
            return "on hold · an operator decides"
        text = self.stage.value.replace("_", " ")
        if self.outcome:
            text += f" · {self.outcome.value.replace('_', ' ')}"
        if self.acknowledged_version > 1:
            text += f", v{self.acknowledged_version} acknowledged"
        if self.escalated:
            text += ", escalated"
        return text


@dataclass
class Referral:
    """One loop of the day: the path it takes, its identifiers, how it should end."""

    n: int
    path: str
    ids: Ids
    intended: Intended
    placer: str = "omi"  # how the order arrives: "omi", "orm" (HL7) or "fhir"
    priority: str = "R"  # HL7 table 0027: S, A, R
    modality: str = "CT"
    failure: str = ""

    @property
    def referral_id(self) -> str:
        return self.ids.referral_id


@dataclass
class Story:
    script: Callable[..., Awaitable[None]]  # async (replay, *referrals)
    referrals: list[Referral] = field(default_factory=list)


class Show(Protocol):
    """What the replay tells the display."""

    def step(self, ref: Referral, protocol: str, what: str) -> None: ...
    def answer(self, ref: Referral, text: str, ok: bool) -> None: ...
    def stage(self, ref: Referral, stage: str) -> None: ...
    def waiting(self, ref: Referral, what: str) -> None: ...
    def failed(self, ref: Referral, why: str) -> None: ...


class Replay:
    def __init__(self, settings: Settings, samples: Samples, store: Store, tokens: dict[str, str], show: Show, pace: float = 0.3):
        self.settings = settings
        self.msgs = Messages(samples)
        self.store = store
        self.tokens = tokens  # system -> bearer token for the HTTP API
        self.show = show
        self.pace = pace
        self.api = f"http://127.0.0.1:{settings.http_port}"

    # --- HL7 v2 over MLLP -------------------------------------------------------------------

    async def hl7(self, ref: Referral, what: str, data: bytes) -> None:
        self.show.step(ref, "HL7", what)
        ack = await hl7client.send(self.settings.mllp_port, data)
        code, text = hl7client.ack_code(ack), hl7client.ack_text(ack)
        self._answered(ref, f"{code} {text}".strip(), code == "AA", what)
        await asyncio.sleep(self.pace)

    # --- FHIR over HTTP ---------------------------------------------------------------------

    async def fhir(self, ref: Referral, what: str, system: str, resource: dict) -> None:
        self.show.step(ref, "FHIR", what)
        headers = {"Authorization": f"Bearer {self.tokens[system]}", "Content-Type": "application/fhir+json"}
        async with httpx.AsyncClient(base_url=self.api, headers=headers, timeout=30) as http:
            resp = await http.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
        outcome = _outcome_code(resp)
        self._answered(ref, f"HTTP {resp.status_code} {outcome}".strip(), resp.status_code < 300, what)
        await asyncio.sleep(self.pace)

    # --- DICOM: the modality -------------------------------------------------------------------

    def _modality(self, ref: Referral) -> Modality:
        calling = ref.ids.station_aet or f"{ref.modality}2"
        return Modality(self.settings.dicom_port, called=self.settings.dicom_ae_title, calling=calling)

    async def worklist(self, ref: Referral, by: str, timeout: float = 15) -> Dataset:
        """C-FIND as the modality: by accession, or by its own AE title (then it picks its item)."""
        query = self.msgs.worklist_query(ref.ids, by)
        key = ref.ids.accession if by == "accession" else f"station {ref.ids.station_aet}"
        self.show.step(ref, "DICOM", f"MWL C-FIND by {key}")
        deadline = asyncio.get_running_loop().time() + timeout
        while True:  # the worklist follows the read model a moment behind the workflow
            items, final = await asyncio.to_thread(self._modality(ref).find, query)
            mine = [i for i in items if str(i.get("AccessionNumber", "")).strip() == ref.ids.accession]
            if mine or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        status = f"0x{int(final.Status):04X}" if final is not None else "no answer"
        self._answered(ref, f"{status}, {len(items)} item(s){', ours found' if mine else ''}", bool(mine), "the worklist item")
        await asyncio.sleep(self.pace)
        return mine[0]

    async def mpps_start(self, ref: Referral, item: Dataset) -> str:
        self.show.step(ref, "DICOM", "MPPS N-CREATE IN PROGRESS")
        modality = self._modality(ref)
        attrs = mpps_from_item(item, modality.ae.ae_title, ref.ids.study_uid)
        status, uid = await asyncio.to_thread(modality.create, attrs, None)
        self._answered(ref, f"0x{int(status.Status):04X}", int(status.Status) == 0 and bool(uid), "MPPS N-CREATE")
        await asyncio.sleep(self.pace)
        return uid

    async def mpps_end(self, ref: Referral, uid: str, status: str, images: Sequence[int] = (), reason: str = "") -> None:
        self.show.step(ref, "DICOM", f"MPPS N-SET {status}" + (f" ({reason})" if reason else ""))
        answer, _ = await asyncio.to_thread(self._modality(ref).set, uid, mpps_final(status, images, reason))
        self._answered(ref, f"0x{int(answer.Status):04X}", int(answer.Status) == 0, "MPPS N-SET")
        await asyncio.sleep(self.pace)

    # --- waiting for the loop -------------------------------------------------------------------

    async def until(self, ref: Referral, what: str, predicate: Callable[[Loop], bool], timeout: float = 30, announce: bool = False) -> Loop:
        """Wait until the loop (SQL read model: what the gateways see) satisfies `predicate`;
        `announce` a wait that takes a while (a timer must fire)."""
        if announce:
            self.show.waiting(ref, what)
        deadline = asyncio.get_running_loop().time() + timeout
        last = ""
        while True:
            loop = await asyncio.to_thread(self.store.get_loop, ref.referral_id)
            if loop is not None:
                last = loop.stage.value
                self.show.stage(ref, (last + (f" · {loop.outcome.value}" if loop.outcome else "")).replace("_", " "))
            if loop is not None and predicate(loop):
                return loop
            if asyncio.get_running_loop().time() > deadline:
                raise StepFailed(ref, f"waited {timeout:.0f}s for {what}; the loop is {last or 'not there'}")
            await asyncio.sleep(0.15)

    async def at(self, ref: Referral, stage: Stage, timeout: float = 30) -> Loop:
        return await self.until(ref, stage.value, lambda lp: lp.stage == stage, timeout)

    # --- the day ----------------------------------------------------------------------------------

    def _answered(self, ref: Referral, text: str, ok: bool, what: str) -> None:
        self.show.answer(ref, text, ok)
        if not ok:
            raise StepFailed(ref, f"{what}: {text}")

    async def run(self, stories: list[Story], stagger: float = 0.4) -> None:
        """Every story at once (a day compressed), each started a moment after the previous."""

        async def one(i: int, story: Story) -> None:
            await asyncio.sleep(i * stagger)
            try:
                await story.script(self, *story.referrals)
            except StepFailed as err:
                self._fail([err.ref], str(err))
            except Exception as err:  # noqa: BLE001 - one broken story must not hide the others
                self._fail(story.referrals, f"{type(err).__name__}: {err}")

        await asyncio.gather(*(one(i, s) for i, s in enumerate(stories)))

    def _fail(self, refs: list[Referral], why: str) -> None:
        for ref in refs:
            if not ref.failure:
                ref.failure = why
                self.show.failed(ref, why)


def _outcome_code(resp: httpx.Response) -> str:
    """What the OperationOutcome says became of the resource (accepted, parked...), or its reason."""
    try:
        issue = (resp.json().get("issue") or [{}])[0]
    except (ValueError, AttributeError):
        return resp.text[:120]
    return ((issue.get("details") or {}).get("coding") or [{}])[0].get("code") or issue.get("diagnostics", "")
