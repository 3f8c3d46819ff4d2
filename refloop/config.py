"""One place for settings: environment variables (REFLOOP_*, DATABASE_URL), then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from refloop.domain.policy import Policy, load_policy


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(_env("REFLOOP_DATA_DIR", ".refloop")))
    database_url: str = field(default_factory=lambda: _env("DATABASE_URL", ""))
    temporal_address: str = field(default_factory=lambda: _env("REFLOOP_TEMPORAL_ADDRESS", "127.0.0.1:7233"))
    namespace: str = field(default_factory=lambda: _env("REFLOOP_NAMESPACE", "default"))
    task_queue: str = field(default_factory=lambda: _env("REFLOOP_TASK_QUEUE", "refloop"))
    policy_file: str = field(default_factory=lambda: _env("REFLOOP_POLICY", ""))
    escalation_webhook: str = field(default_factory=lambda: _env("REFLOOP_ESCALATION_WEBHOOK", ""))
    operations_webhook: str = field(default_factory=lambda: _env("REFLOOP_OPERATIONS_WEBHOOK", ""))
    # Who we are to requesters: DiagnosticReport.performer, Task.owner, MSH-4.
    department: str = field(default_factory=lambda: _env("REFLOOP_DEPARTMENT", "Imaging department"))
    # How often the outbox relay looks for status messages to send (seconds).
    outbox_poll: float = field(default_factory=lambda: float(_env("REFLOOP_OUTBOX_POLL", "1.0")))
    bind_host: str = field(default_factory=lambda: _env("REFLOOP_BIND_HOST", "127.0.0.1"))
    mllp_port: int = field(default_factory=lambda: int(_env("REFLOOP_MLLP_PORT", "2575")))
    http_port: int = field(default_factory=lambda: int(_env("REFLOOP_HTTP_PORT", "8000")))
    # MSH-11 processing IDs the MLLP listener accepts ("P,T" also takes training messages).
    hl7_processing_ids: str = field(default_factory=lambda: _env("REFLOOP_HL7_PROCESSING_IDS", "P"))
    # "MSH3APP=https://ehr.example/results,...": where results go for orders placed over HL7.
    hl7_result_endpoints: str = field(default_factory=lambda: _env("REFLOOP_HL7_RESULT_ENDPOINTS", ""))
    dicom_port: int = field(default_factory=lambda: int(_env("REFLOOP_DICOM_PORT", "11112")))
    dicom_ae_title: str = field(default_factory=lambda: _env("REFLOOP_DICOM_AE_TITLE", "REFLOOP"))
    # DICOM dates and times carry no zone: the department's local zone (IANA name).
    dicom_timezone: str = field(default_factory=lambda: _env("REFLOOP_DICOM_TIMEZONE", "UTC"))
    # Keep an item on the modality worklist after its MPPS started (default: it leaves).
    mwl_keep_started: bool = field(default_factory=lambda: _env("REFLOOP_MWL_KEEP_STARTED", "0").lower() in ("1", "true", "yes"))
    orthanc_url: str = field(default_factory=lambda: _env("REFLOOP_ORTHANC_URL", ""))
    # The workflow sandbox turns a non-deterministic call into an immediate failure; off saves
    # about a quarter of the worker's CPU (see README, Performance).
    workflow_sandbox: bool = field(default_factory=lambda: _env("REFLOOP_WORKFLOW_SANDBOX", "1").lower() not in ("0", "false", "no", "off"))
    orthanc_poll_seconds: float = field(default_factory=lambda: float(_env("REFLOOP_ORTHANC_POLL_SECONDS", "2")))
    # POSTed once per loop when its study is ready to read (empty: no webhook).
    reading_webhook: str = field(default_factory=lambda: _env("REFLOOP_READING_WEBHOOK", ""))
    # "system=token,system2=token2": bearer tokens per source system for the HTTP API.
    api_tokens: str = field(default_factory=lambda: _env("REFLOOP_API_TOKENS", ""))

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        from refloop.store.db import sqlite_url

        return sqlite_url(self.data_dir)

    def policy(self) -> Policy:
        return load_policy(self.policy_file)

    def hl7_requester_endpoints(self) -> dict[str, str]:
        """placer application (MSH-3, or "app/facility") -> result endpoint."""
        pairs = [p.split("=", 1) for p in self.hl7_result_endpoints.split(",") if "=" in p]
        return {app.strip(): url.strip() for app, url in pairs}

    def tokens(self) -> dict[str, str]:
        """token -> source system."""
        pairs = [p.split("=", 1) for p in self.api_tokens.split(",") if "=" in p]
        return {token.strip(): system.strip() for system, token in pairs}
