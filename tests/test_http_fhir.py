"""FHIR R4 through the HTTP gateway, with the public FHIR 4.0.1 examples in shared/samples:
every sample the API takes drives a real loop (real Temporal, worker, uvicorn); every other one
is refused with an OperationOutcome that says why. Identifiers are re-keyed per test so loops tie
together and never collide; the resources' structure is kept (where a sample lacks the link to
its order, the test adds it and says so)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from refloop.gateways.http.fhir.refs import V2_0203
from refloop.store.repo import InboxStore
from tests.http_support import outcome_code, rekey, running_api, sample, sample_files

FHIR_JSON = "application/fhir+json"

# Samples the API refuses as they are, with the status and the reason a person would agree with.
REFUSED = {
    "appointment-example-request.json": (422, "Appointment status 'proposed' is not a loop event"),
    "appointment-example2doctors.json": (422, "Appointment names no referral"),
    "appointmentresponse-example.json": (404, "refloop does not take AppointmentResponse resources"),
    "diagnosticreport-example.json": (422, "a Bundle of type 'collection' is a set of resources, not a request"),
    "diagnosticreport-example-ultrasound.json": (422, "DiagnosticReport names no referral"),
    "encounter-example-f201-20130404.json": (422, "Encounter status 'finished' is not an arrival"),
    "procedure-example.json": (404, "refloop does not take Procedure resources"),
    "servicerequest-example.json": (422, "ServiceRequest status 'completed' is not an order to fulfil"),
    "task-example1.json": (422, "Task status 'in-progress' does not acknowledge a result"),
    "task-example2.json": (422, "Task status 'accepted' does not acknowledge a result"),
}
CODE_SYSTEM = (404, "refloop does not take CodeSystem resources")
# Samples that drive the full loop below (after re-keying).
TAKEN = {
    "servicerequest-example-di.json",
    "appointment-example.json",
    "encounter-example.json",
    "imagingstudy-example-xr.json",
    "diagnosticreport-example-ultrasound.json",  # with basedOn added: as published it names no order
    "task-example1.json",  # with status completed and focus on the order: an acknowledgment
}


def fresh() -> dict[str, str]:
    u = uuid.uuid4()
    return {"sr": f"SR-{u.hex[:10]}", "pat": f"PAT-{u.hex[:8]}", "acc": f"ACC-{u.hex[:10]}", "uid": f"2.25.{u.int}", "n": u.hex[:8]}


def iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def order_sample(ids: dict[str, str]) -> dict:
    return rekey(sample("servicerequest-example-di.json"), {"di": ids["sr"], "Patient/dicom": f"Patient/{ids['pat']}"})


def booking_sample(ids: dict[str, str], start: datetime, appt_id: str = "") -> dict:
    return rekey(
        sample("appointment-example.json"),
        {
            "example": appt_id or f"appt-{ids['n']}",
            "ServiceRequest/myringotomy": f"ServiceRequest/{ids['sr']}",
            "Patient/example": f"Patient/{ids['pat']}",
            "2013-12-10T09:00:00Z": iso(start),
            "2013-12-10T11:00:00Z": iso(start + timedelta(hours=1)),
        },
    )


def report_sample(ids: dict[str, str], status: str = "final", based_on: list | None = None) -> dict:
    now = iso(datetime.now(timezone.utc))  # issued now: a 2012 report would be overdue at once
    mapping = {"ultrasound": f"us-{ids['n']}", "Patient/example": f"Patient/{ids['pat']}", "final": status, "2012-12-01T12:00:00+01:00": now}
    report = rekey(sample("diagnosticreport-example-ultrasound.json"), mapping)
    report["basedOn"] = based_on if based_on is not None else [{"reference": f"ServiceRequest/{ids['sr']}"}]
    return report


def acsn(value: str) -> dict:
    return {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": value}


def kinds(view: dict) -> list[str]:
    return [t["kind"] for t in view["timeline"]]


async def post(api, system: str, resource: dict, **headers) -> tuple[int, dict]:
    async with api.client(system) as http:
        resp = await http.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
    assert resp.headers["content-type"] == FHIR_JSON, resp.text
    return resp.status_code, resp.json() if resp.content else {}


def test_every_sample_is_either_taken_or_refused_here():
    names = {p.name for p in sample_files()}
    code_systems = {n for n in names if n.startswith("codesystem-") or n.endswith(".cs.json")}
    assert names == set(REFUSED) | TAKEN | code_systems


async def test_full_loop_from_the_fhir_samples_and_json_closes_on_task_completed(client, task_queue, store):
    ids = fresh()
    sr, pat, acc = ids["sr"], ids["pat"], ids["acc"]
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=2)
    async with running_api(client, store, task_queue) as api:
        status, oo = await post(api, "ehr", order_sample(ids))
        assert status == 201 and outcome_code(oo) == "accepted" and sr in oo["issue"][0]["diagnostics"]
        view = await api.referral(sr, lambda r: r["stage"] == "ordered")
        assert view["patient"] == {"value": pat, "issuer": "fhir"}
        assert view["service"]["procedure_code"] == "24627-2" and view["service"]["procedure_display"] == "Chest CT"

        status, oo = await post(api, "ris", booking_sample(ids, start))
        assert status == 201 and outcome_code(oo) == "accepted"
        view = await api.referral(sr, lambda r: r["stage"] == "scheduled")
        assert datetime.fromisoformat(view["appointment"]["start"]) == start
        assert view["appointment"]["location"] == "South Wing, second floor"

        # The encounter names only its patient: it binds the one loop of that patient awaiting arrival.
        encounter = rekey(sample("encounter-example.json"), {"example": f"enc-{ids['n']}", "Patient/example": f"Patient/{pat}"})
        status, oo = await post(api, "ris", encounter)
        assert status == 201 and outcome_code(oo) == "accepted" and sr in oo["issue"][0]["diagnostics"]
        await api.referral(sr, lambda r: r["stage"] == "arrived")

        async with api.client("ris") as http:
            for kind, extra in (("procedure_started", {}), ("procedure_completed", {"series_count": 1, "instance_count": 2})):
                resp = await http.post(f"/events/{kind}", json={"referral": sr, "event_id": f"{sr}-{kind}", "mpps_uid": f"{ids['uid']}.9", **extra})
                assert resp.status_code == 202, resp.text
        await api.referral(sr, lambda r: r["stage"] == "acquired")

        study = rekey(
            sample("imagingstudy-example-xr.json"),
            {
                "example-xr": f"study-{ids['n']}",
                "ServiceRequest/example": f"ServiceRequest/{sr}",
                "W12342398": acc,
                "urn:oid:2.16.124.113543.6003.1154777499.30246.19789.3503430046": f"urn:oid:{ids['uid']}",
                "Patient/dicom": f"Patient/{pat}",
            },
        )
        status, oo = await post(api, "pacs", study)
        assert status == 201 and outcome_code(oo) == "accepted"
        view = await api.referral(sr, lambda r: r["stage"] == "archived")
        assert view["identifiers"]["accession_number"] == acc and view["identifiers"]["study_instance_uid"] == ids["uid"]
        assert view["archived_instances"] == 2 and view["performed_instances"] == 2

        # As published the ultrasound report names no order: refused, and nothing happens to the loop.
        as_published = rekey(sample("diagnosticreport-example-ultrasound.json"), {"ultrasound": f"us-{ids['n']}", "Patient/example": f"Patient/{pat}"})
        status, oo = await post(api, "reporting", as_published)
        assert status == 422 and "names no referral" in oo["issue"][0]["diagnostics"]
        status, oo = await post(api, "reporting", report_sample(ids))
        assert status == 201 and outcome_code(oo) == "accepted"
        view = await api.referral(acc, lambda r: r["stage"] == "reported_final")
        assert view["report"]["version"] == 1 and view["report"]["report_id"] == f"us-{ids['n']}"

        async with api.client("ris") as http:
            resp = await http.post("/events/result_delivered", json={"referral": sr, "event_id": f"{sr}-delivered", "report_version": 1})
            assert resp.status_code == 202
        await api.referral(sr, lambda r: r["stage"] == "delivered")

        ack = rekey(sample("task-example1.json"), {"example1": f"ack-{ids['n']}", "in-progress": "completed", "ServiceRequest/lipid": f"ServiceRequest/{sr}"})
        status, oo = await post(api, "ehr", ack)
        assert status == 201 and outcome_code(oo) == "accepted"
        view = await api.referral(sr, lambda r: r["stage"] == "closed")
        assert view["outcome"] == "completed" and view["acknowledged_version"] == 1
        assert kinds(view) == [
            "order_placed", "scheduled", "arrived", "procedure_started", "procedure_completed",
            "study_archived", "report_issued", "result_delivered", "result_acknowledged",
        ]
        assert [t["source"] for t in view["timeline"]] == ["ehr", "ris", "ris", "ris", "ris", "pacs", "reporting", "ris", "ehr"]
        assert all(t["applied"] for t in view["timeline"])


async def test_samples_the_api_does_not_take_are_refused_with_the_reason(client, task_queue, store):
    async with running_api(client, store, task_queue) as api:
        async with api.client("ehr") as http:
            for path in sample_files():
                resource = json.loads(path.read_text())
                if path.name in TAKEN and path.name not in REFUSED:
                    continue
                expected_status, reason = REFUSED.get(path.name, CODE_SYSTEM)
                url = "/fhir" if resource["resourceType"] == "Bundle" else f"/fhir/{resource['resourceType']}"
                resp = await http.post(url, json=resource)
                assert resp.status_code == expected_status, (path.name, resp.text)
                assert resp.headers["content-type"] == FHIR_JSON
                oo = OperationOutcome.model_validate(resp.json())
                assert oo.issue[0].severity == "error" and reason in oo.issue[0].diagnostics, (path.name, oo.issue[0].diagnostics)
            # The lab report inside the Bundle, sent alone, names no order either.
            lab = next(e["resource"] for e in sample("diagnosticreport-example.json")["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
            resp = await http.post("/fhir/DiagnosticReport", json=lab)
            assert resp.status_code == 422 and "names no referral" in resp.json()["issue"][0]["diagnostics"]
    refused = InboxStore(store.engine).list(status="rejected", limit=1000)
    assert len(refused) == len(sample_files()) - len(TAKEN - set(REFUSED)) + 1
    assert all(r.raw and r.error and r.protocol == "fhir" for r in refused)
    assert store.loops() == []  # nothing refused started a loop


async def test_fhir_statuses_map_to_their_events(client, task_queue, store):
    """Report, appointment and order statuses, each on its own loop."""
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=3)
    a, b, c, d, e = (fresh() for _ in range(5))
    async with running_api(client, store, task_queue) as api:
        for ids in (a, b, c, d, e):
            assert (await post(api, "ehr", order_sample(ids)))[0] == 201

        # Reports: preliminary, final, amended (a new version to deliver), entered in error.
        for version, status in enumerate(["preliminary", "final", "amended", "entered-in-error"], start=1):
            report = report_sample(a, status)
            report["meta"] = {"versionId": str(version)}
            assert (await post(api, "reporting", report))[0] == 201
        view = await api.referral(a["sr"], lambda r: r["stage"] == "entered_in_error")
        assert kinds(view) == ["order_placed", "report_issued", "report_issued", "report_revised", "report_withdrawn"]
        assert all(t["applied"] for t in view["timeline"]) and view["report"]["version"] == 2

        # Appointment: booked, booked again at another time (rescheduled), then no-show.
        booked = booking_sample(b, start)
        assert (await post(api, "ris", booked))[0] == 201
        await api.referral(b["sr"], lambda r: r["stage"] == "scheduled")
        moved = booking_sample(b, start + timedelta(days=1))
        moved["meta"] = {"versionId": "2"}
        assert (await post(api, "ris", moved))[0] == 201
        noshow = {**moved, "status": "noshow", "meta": {"versionId": "3"}}
        assert (await post(api, "ris", noshow))[0] == 201
        view = await api.referral(b["sr"], lambda r: r["stage"] == "did_not_attend")
        assert kinds(view) == ["order_placed", "scheduled", "rescheduled", "did_not_attend"]
        assert datetime.fromisoformat(view["appointment"]["start"]) == start + timedelta(days=1)

        # Order revoked by the requester.
        revoked = {**order_sample(c), "status": "revoked", "meta": {"versionId": "2"}}
        assert (await post(api, "ehr", revoked))[0] == 201
        view = await api.referral(c["sr"], lambda r: r["stage"] == "cancelled")
        assert kinds(view) == ["order_placed", "referral_cancelled"] and view["outcome"] == "cancelled"

        # Appointment cancelled.
        assert (await post(api, "ris", booking_sample(d, start)))[0] == 201
        assert (await post(api, "ris", {**booking_sample(d, start), "status": "cancelled", "meta": {"versionId": "2"}}))[0] == 201
        view = await api.referral(d["sr"], lambda r: r["stage"] == "cancelled")
        assert kinds(view) == ["order_placed", "scheduled", "appointment_cancelled"]

        # Checked in at the desk (Appointment checked-in) = arrived; then a cancelled report goes back to waiting.
        assert (await post(api, "ris", booking_sample(e, start)))[0] == 201
        assert (await post(api, "ris", {**booking_sample(e, start), "status": "checked-in", "meta": {"versionId": "2"}}))[0] == 201
        await api.referral(e["sr"], lambda r: r["stage"] == "arrived")
        for version, status in enumerate(["partial", "cancelled"], start=1):
            report = report_sample(e, status)
            report["meta"] = {"versionId": str(version)}
            assert (await post(api, "reporting", report))[0] == 201
        view = await api.referral(e["sr"], lambda r: kinds(r)[-1:] == ["report_withdrawn"])
        assert kinds(view) == ["order_placed", "scheduled", "arrived", "report_issued", "report_withdrawn"]
        assert view["stage"] == "archived" and view["report"]["status"] == "withdrawn"


async def test_same_report_three_times_gives_one_transition_and_three_successes(client, task_queue, store):
    ids = fresh()
    async with running_api(client, store, task_queue) as api:
        assert (await post(api, "ehr", order_sample(ids)))[0] == 201
        without_version = report_sample(ids)  # keyed by a hash of its content
        with_version = {**report_sample(ids, "amended"), "meta": {"versionId": "7"}}  # keyed by id + version
        for report, kind in ((without_version, "report_issued"), (with_version, "report_revised")):
            answers = [await post(api, "reporting", report) for _ in range(3)]
            assert [s for s, _ in answers] == [201, 200, 200]
            assert [outcome_code(oo) for _, oo in answers] == ["accepted", "duplicate", "duplicate"]
            assert "already received (accepted for referral" in answers[2][1]["issue"][0]["diagnostics"]
        view = await api.referral(ids["sr"], lambda r: r["report"]["version"] == 2)
        assert kinds(view) == ["order_placed", "report_issued", "report_revised"]
        # The requester acknowledges version 2 of the report it got: Task focus = that report version.
        async with api.client("ris") as http:
            await http.post("/events/result_delivered", json={"referral": ids["sr"], "event_id": f"{ids['sr']}-d2", "report_version": 2})
        ack = rekey(sample("task-example1.json"), {"example1": f"ack-{ids['n']}", "in-progress": "completed", "ServiceRequest/lipid": f"DiagnosticReport/{without_version['id']}/_history/2"})
        answers = [await post(api, "ehr", ack) for _ in range(3)]
        assert [s for s, _ in answers] == [201, 200, 200]
        view = await api.referral(ids["sr"], lambda r: r["stage"] == "closed")
        assert view["acknowledged_version"] == 2 and kinds(view).count("result_acknowledged") == 1


async def test_report_and_study_before_their_order_are_parked_then_released(client, task_queue, store):
    ids = fresh()
    acc = ids["acc"]
    async with running_api(client, store, task_queue) as api:
        # The study points at an order we have never seen, and carries the accession: kept by accession.
        study = rekey(sample("imagingstudy-example-xr.json"), {"example-xr": f"study-{ids['n']}", "ServiceRequest/example": f"ServiceRequest/{ids['sr']}", "W12342398": acc})
        status, oo = await post(api, "pacs", study)
        assert status == 202 and outcome_code(oo) == "parked" and f"accession={acc}" in oo["issue"][0]["diagnostics"]
        report = report_sample(ids, based_on=[{"identifier": acsn(acc)}])  # basedOn the order by its accession
        status, oo = await post(api, "reporting", report)
        assert status == 202 and outcome_code(oo) == "parked"
        assert store.loops() == []

        order = order_sample(ids)
        order["identifier"] = [{"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]}, "value": f"PLAC-{ids['n']}"}, acsn(acc)]
        status, oo = await post(api, "ehr", order)
        assert status == 201
        view = await api.referral(f"PLAC-{ids['n']}", lambda r: r["stage"] == "reported_final")
        assert view["referral_id"] == f"PLAC-{ids['n']}" and view["archived_instances"] == 2
        assert kinds(view) == ["order_placed", "study_archived", "report_issued"]
        released = {r.message_type: r for r in InboxStore(store.engine).list(status="released")}
        assert set(released) == {"ImagingStudy", "DiagnosticReport"}
        assert all(r.referral_id == view["referral_id"] for r in released.values())
        # The sender retries the parked report: a success, and nothing changes.
        status, oo = await post(api, "reporting", report)
        assert status == 200 and outcome_code(oo) == "duplicate"


async def test_fhir_errors_are_operation_outcomes(client, task_queue, store):
    ids = fresh()
    order = order_sample(ids)
    async with running_api(client, store, task_queue) as api:
        async with api.client() as anonymous:
            missing = await anonymous.post("/fhir/ServiceRequest", json=order)
            metadata = await anonymous.get("/fhir/metadata")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.headers["content-type"] == FHIR_JSON and missing.json()["issue"][0]["code"] == "login"
        assert metadata.status_code == 200
        cs = CapabilityStatement.model_validate(metadata.json())
        assert {r.type for r in cs.rest[0].resource} == {"ServiceRequest", "Appointment", "Encounter", "ImagingStudy", "DiagnosticReport", "Task"}
        async with api.client(token="stolen?") as stranger:
            forbidden = await stranger.post("/fhir/ServiceRequest", json=order)
        assert forbidden.status_code == 403 and forbidden.json()["issue"][0]["code"] == "forbidden"

        async with api.client("ehr") as http:
            invalid = await http.post("/fhir/ServiceRequest", json={**order, "subject": "Patient/x"})
            not_json = await http.post("/fhir/ServiceRequest", content=b"<ServiceRequest/>", headers={"content-type": "application/json"})
            xml = await http.post("/fhir/ServiceRequest", content=b"<ServiceRequest/>", headers={"content-type": "application/fhir+xml"})
            wrong_type = await http.post("/fhir/ServiceRequest", json=sample("encounter-example.json"))
            id_mismatch = await http.put("/fhir/ServiceRequest/other-id", json=order)
            unknown_route = await http.get("/fhir/ServiceRequest/x")
        for resp, status, code in (
            (invalid, 422, "structure"), (not_json, 400, "structure"), (xml, 415, "not-supported"),
            (wrong_type, 400, "structure"), (id_mismatch, 400, "invariant"), (unknown_route, 405, "not-supported"),
        ):
            assert resp.status_code == status, resp.text
            assert resp.headers["content-type"] == FHIR_JSON
            assert OperationOutcome.model_validate(resp.json()).issue[0].code == code
        assert "ServiceRequest.subject" in invalid.json()["issue"][0]["diagnostics"]
        assert store.loops() == []
        # PUT with the right id is an update like any other.
        async with api.client("ehr") as http:
            ok = await http.put(f"/fhir/ServiceRequest/{ids['sr']}", json=order, headers={"Prefer": "return=representation"})
            minimal = await http.put(f"/fhir/ServiceRequest/{ids['sr']}", json=order, headers={"Prefer": "return=minimal"})
        assert ok.status_code == 201 and ok.json() == order
        assert minimal.status_code == 200 and minimal.content == b""


async def test_batch_bundle_entries_are_handled_one_by_one(client, task_queue, store):
    ids = fresh()
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=2)
    booking = booking_sample(ids, start)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": order_sample(ids), "request": {"method": "POST", "url": "ServiceRequest"}},
            {"resource": booking, "request": {"method": "PUT", "url": f"Appointment/{booking['id']}"}},
            {"resource": sample("procedure-example.json"), "request": {"method": "POST", "url": "Procedure"}},
        ],
    }
    async with running_api(client, store, task_queue) as api:
        async with api.client("ris") as http:
            resp = await http.post("/fhir", json=batch)
            transaction = await http.post("/fhir", json={**batch, "type": "transaction"})
        assert resp.status_code == 200 and resp.headers["content-type"] == FHIR_JSON
        answer = Bundle.model_validate(resp.json())
        assert answer.type == "batch-response"
        assert [e.response.status for e in answer.entry] == ["201 Created", "201 Created", "404 Not Found"]
        await api.referral(ids["sr"], lambda r: r["stage"] == "scheduled")
        assert transaction.status_code == 422 and "send the same entries as a batch Bundle" in transaction.json()["issue"][0]["diagnostics"]


async def test_patient_identifier_with_its_issuer_decides_who_arrived(client, task_queue, store):
    """Reference.identifier system + value is the patient ID + issuer; the same value under another
    issuer is another patient. (The samples reference patients literally; identifiers are added.)"""
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=2)
    mrn = {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": f"MRN-{uuid.uuid4().hex[:8]}"}
    other_issuer = {**mrn, "system": "urn:oid:9.9.9"}
    first, second = fresh(), fresh()
    async with running_api(client, store, task_queue) as api:
        for ids in (first, second):
            order = order_sample(ids)
            order["subject"]["identifier"] = mrn
            assert (await post(api, "ehr", order))[0] == 201
        view = await api.referral(first["sr"], lambda r: r["stage"] == "ordered")
        assert view["patient"] == {"value": mrn["value"], "issuer": mrn["system"]}
        appointment = booking_sample(first, start)
        assert (await post(api, "ris", appointment))[0] == 201
        await api.referral(first["sr"], lambda r: r["stage"] == "scheduled")

        def encounter(subject_id: dict, n: str, appointment_ref: str = "") -> dict:
            enc = rekey(sample("encounter-example.json"), {"example": f"enc-{n}"})
            enc["subject"] = {"identifier": subject_id}
            if appointment_ref:
                enc["appointment"] = [{"reference": appointment_ref}]
            return enc

        status, oo = await post(api, "ris", encounter(other_issuer, first["n"] + "a"))
        assert status == 202 and outcome_code(oo) == "parked"  # another issuer: another patient
        status, oo = await post(api, "ris", encounter(mrn, first["n"] + "b"))
        # Only the first loop is booked and awaiting arrival: the second is merely ordered but also
        # awaits arrival, so the patient alone is ambiguous and an operator decides.
        assert status == 202 and outcome_code(oo) == "ambiguous"
        assert first["sr"] in oo["issue"][0]["diagnostics"] and second["sr"] in oo["issue"][0]["diagnostics"]

        # Naming the appointment ties the arrival to its loop; a patient under another issuer puts it on hold.
        status, oo = await post(api, "ris", encounter(other_issuer, first["n"] + "c", f"Appointment/{appointment['id']}"))
        assert status == 201 and outcome_code(oo) == "accepted" and first["sr"] in oo["issue"][0]["diagnostics"]
        view = await api.referral(first["sr"], lambda r: r["stage"] == "on_hold")
        assert view["needs_attention"] is True
